"""``method.name: pretrained-clip``: CLIP training / evaluation starting from a pretrained CLIP — a Hugging Face CLIP
directory or an open_clip state dict with both towers (:mod:`clpoison.models.pretrained`). The same symmetric InfoNCE
as :mod:`clpoison.methods.clip`, on the model's own towers, with its own tokenizer. A run with this method fine-tunes
the pretrained model (attack: poisoned pairs; defense: the CLIP defenses that wrap a method); ``clpoison scan`` /
``evaluate`` build it from a bare model. ``model.*`` (arch, width) is ignored: the architecture is the model's; image
size and mean/std follow its preprocessing (the image-text task sets ``augment.out_size/mean/std`` from it).

The usual way in is ``model.init=PATH`` on a CLIP config (``method.name: clip``): the task then builds this method
with ``path = model.init`` (and ``tokenizer = method.params.tokenizer``, for an open_clip model), see
:func:`clpoison.experiments.tasks.image_text.resolve_method`. ``method.name: hf-clip`` with ``method.params.path``
is the same method under its first name.

A checkpoint of such a run holds the fine-tuned weights; rebuilding it reads the architecture and tokenizer from the
path again, so the pretrained model must still be there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from torch import nn

from ..errors import ConfigError
from ..models.pretrained import load_pretrained_clip
from .base import METHODS, MethodParams
from .clip import CLIPObjective

ACTIVATIONS = ("gelu", "quick_gelu")


@dataclass
class PretrainedCLIPParams(MethodParams):
    path: str = ""  # the pretrained CLIP: a Hugging Face CLIP directory or an open_clip state dict (model.init sets it)
    tokenizer: Optional[str] = None  # open_clip: its tokenizer files (default: beside the weights)
    context_length: Optional[int] = None  # null: the model's own (its positional embeddings)
    max_logit_scale: float = 100.0
    heads: Optional[int] = None  # open_clip: attention heads (default: open_clip_config.json, else width / 64)
    activation: Optional[str] = None  # open_clip: gelu | quick_gelu (default: open_clip_config.json, else gelu)
    embed_dim: Optional[int] = None  # the model's embedding size, filled in when it is read (the defenses read it)

    def __post_init__(self) -> None:
        if self.context_length is not None and self.context_length < 3:
            raise ConfigError(f"method.params.context_length={self.context_length} must be >= 3")
        if self.activation is not None and self.activation not in ACTIVATIONS:
            raise ConfigError(f"method.params.activation='{self.activation}' is not one of {', '.join(ACTIVATIONS)}")
        if self.heads is not None and self.heads < 1:
            raise ConfigError(f"method.params.heads={self.heads} must be >= 1")


@METHODS.register("pretrained-clip")
class PretrainedCLIPMethod(CLIPObjective):
    name = "pretrained-clip"
    modality = "image-text"
    Params = PretrainedCLIPParams
    own_tokenizer = True  # the task does not train a BPE tokenizer for it

    def __init__(self, backbone: Optional[nn.Module] = None, params: Optional[PretrainedCLIPParams] = None,
                 tokenizer: Any = None) -> None:
        super().__init__()
        if params is None:
            raise ConfigError(f"{self.name} needs its params (model.init=PATH or method.params.path)")
        loaded = load_pretrained_clip(params.path, params.tokenizer, params.heads, params.activation,
                                      params.max_logit_scale)
        if params.context_length is not None and params.context_length > loaded.context_length:
            raise ConfigError(f"method.params.context_length={params.context_length} exceeds the model's "
                              f"{loaded.context_length}")
        if params.embed_dim is not None and params.embed_dim != loaded.embed_dim:
            raise ConfigError(f"method.params.embed_dim={params.embed_dim} is not the model's {loaded.embed_dim}; "
                              "leave it unset")
        self.params = params
        params.context_length = params.context_length or loaded.context_length
        params.embed_dim = loaded.embed_dim
        self.tokenizer, self.model, self.preprocessing = loaded.tokenizer, loaded.model, loaded.preprocessing
        self.format = loaded.format


@METHODS.register("hf-clip")
class HFCLIP(PretrainedCLIPMethod):
    """The same method under its first name (``method.params.path`` = a Hugging Face CLIP directory)."""

    name = "hf-clip"


HFCLIPParams = PretrainedCLIPParams
