"""``method.name: hf-clip``: CLIP training / evaluation starting from a pretrained Hugging Face CLIP directory
(``method.params.path``) — the same symmetric InfoNCE as :mod:`clpoison.methods.clip`, on the directory's towers,
with its own tokenizer (:mod:`clpoison.models.hf_clip`). A run with this method fine-tunes the pretrained model
(attack: poisoned pairs; defense: the CLIP defenses that wrap a method); ``clpoison scan`` / ``evaluate`` build it
from a bare directory. ``model.*`` is ignored (the architecture is the directory's); image size and mean/std follow
the directory's preprocessing (the image-text task sets ``augment.out_size/mean/std`` from it).

A checkpoint of such a run holds the fine-tuned weights; rebuilding it reads the architecture and tokenizer from
``method.params.path`` again, so that directory must still exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from torch import nn

from ..errors import ConfigError
from ..models.hf_clip import HFCLIPModel, HFTokenizer, load_hf_clip
from .base import METHODS, MethodParams
from .clip import CLIPObjective


@dataclass
class HFCLIPParams(MethodParams):
    path: str = ""  # the Hugging Face CLIP directory (config.json, model.safetensors, tokenizer files)
    context_length: int = 77
    max_logit_scale: float = 100.0

    def __post_init__(self) -> None:
        if self.context_length < 3:
            raise ConfigError(f"method.params.context_length={self.context_length} must be >= 3")


@METHODS.register("hf-clip")
class HFCLIP(CLIPObjective):
    name = "hf-clip"
    modality = "image-text"
    Params = HFCLIPParams
    own_tokenizer = True  # the task does not train a BPE tokenizer for it

    def __init__(self, backbone: Optional[nn.Module] = None, params: Optional[HFCLIPParams] = None,
                 tokenizer: Any = None) -> None:
        super().__init__()
        if params is None:
            raise ConfigError("hf-clip needs its params (method.params.path)")
        self.params = params
        hf = load_hf_clip(params.path)  # checks the directory first (method.params.path is set per run)
        self.tokenizer = HFTokenizer(params.path)
        limit = int(hf.config.text_config.max_position_embeddings)
        if params.context_length > limit:
            raise ConfigError(f"method.params.context_length={params.context_length} exceeds the model's {limit}")
        self.model = HFCLIPModel(hf, self.tokenizer.pad_id, params.max_logit_scale)
