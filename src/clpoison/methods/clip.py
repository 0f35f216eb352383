"""CLIP (Radford et al., ICML 2021): symmetric InfoNCE between paired image and caption embeddings.

``clip_loss`` is the loss of CLIP's pseudo-code (§2.3, Fig. 3): cosine similarities scaled by the learned
temperature, cross-entropy over captions for each image and over images for each caption, averaged. Under
``torchrun`` (``torch.distributed`` initialised, world size > 1) each rank gathers the features of every rank
*with gradient* (:func:`clpoison.utils.dist.all_gather_with_grad`) and scores its local rows against the global batch
with labels offset by ``rank × local batch`` (open_clip's ``gather_with_grad`` + ``local_loss``); with DDP's gradient
averaging this gives the gradient of the global-batch loss, so the loss needs no rewriting for multi-GPU runs.

The method's ``encoder`` is the image tower (for the linear probe); ``model`` is the full
:class:`~clpoison.models.clip_model.CLIPModel`. The caption tokenizer travels in the state dict (``_extra_state``), so
a checkpoint is self-contained.

Paper-scale defaults (``clip-rn50-cc3m`` preset, ``shared/reference/algorithms.md`` §1.6): ResNet-50 image tower,
12-layer 512-wide text tower (8 heads), context 77, AdamW lr 5e-4, wd 0.1, warm-up then cosine, 32 epochs.

Example::

    >>> import torch
    >>> from clpoison.methods.clip import clip_loss
    >>> img = torch.nn.functional.normalize(torch.randn(8, 16), dim=1)
    >>> loss = clip_loss(img, img.clone(), torch.tensor(100.0))  # matched pairs → near-zero loss
    >>> float(loss) < 0.1
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..data.captions.tokenizer import CaptionTokenizer
from ..errors import ConfigError
from ..models.clip_model import CLIPModel
from ..models.text import BagOfWordsText, TextTransformer
from ..utils.dist import all_gather_with_grad, rank
from .base import METHODS, Method, MethodParams, check_positive

TEXT_TOWERS = ("transformer", "bow")


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank, keeping the autograd graph (identity when not distributed)."""
    return all_gather_with_grad(x)


def clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE of L2-normalised embeddings (B,D); row i of each is a positive pair.

    Distributed: local rows against the features of all ranks, labels offset by this rank's position.
    """
    if image_emb.shape != text_emb.shape:
        raise ValueError(f"clip_loss: image and text embeddings differ in shape {tuple(image_emb.shape)} vs {tuple(text_emb.shape)}")
    image_emb, text_emb = image_emb.float(), text_emb.float()
    all_img, all_txt = gather_with_grad(image_emb), gather_with_grad(text_emb)
    logits_i = logit_scale * image_emb @ all_txt.t()
    logits_t = logit_scale * text_emb @ all_img.t()
    labels = torch.arange(len(image_emb), device=image_emb.device) + rank() * len(image_emb)
    return 0.5 * (F.cross_entropy(logits_i, labels) + F.cross_entropy(logits_t, labels))


@dataclass
class CLIPParams(MethodParams):
    embed_dim: int = 128
    text_tower: str = "transformer"  # transformer (CLIP's causal Transformer) | bow (bag of tokens + MLP, CPU preset)
    text_width: int = 128
    text_layers: int = 3
    text_heads: int = 4
    text_mlp_ratio: float = 4.0
    context_length: int = 32  # captions longer than this are truncated (<eot> kept last)
    vocab_size: int = 2048  # BPE vocabulary learned from the training captions
    tokenizer: Optional[str] = None  # path to a tokenizer.json; null → train one on the training captions
    init_logit_scale: float = 1 / 0.07
    max_logit_scale: float = 100.0

    def __post_init__(self) -> None:
        check_positive(self, "embed_dim", "text_width", "text_layers", "text_heads", "text_mlp_ratio", "init_logit_scale")
        if self.text_tower not in TEXT_TOWERS:
            raise ConfigError(f"method.params.text_tower='{self.text_tower}' is unknown; choose one of: {', '.join(TEXT_TOWERS)}")
        if self.text_width % self.text_heads:
            raise ConfigError(f"method.params.text_width={self.text_width} must be divisible by text_heads={self.text_heads}")
        if self.context_length < 3:
            raise ConfigError(f"method.params.context_length={self.context_length} must be >= 3")
        if self.vocab_size < 260:
            raise ConfigError(f"method.params.vocab_size={self.vocab_size} must be >= 260 (bytes + special tokens)")
        if self.max_logit_scale < self.init_logit_scale:
            raise ConfigError("method.params.max_logit_scale must be >= init_logit_scale")


class CLIPObjective(Method):
    """What every CLIP method shares: ``self.model`` maps (images, tokens) to (image features, text features, logit
    scale); the encoder is its image tower and the loss is :func:`clip_loss` (clpoison's CLIP, a Hugging Face CLIP)."""

    model: nn.Module

    @property
    def encoder(self) -> nn.Module:
        return self.model.visual

    def loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float], dict[str, Any]]:
        img, txt, scale = self.model(batch["images"], batch["tokens"])
        return clip_loss(img, txt, scale), {"logit_scale": float(scale.detach())}, {}


@METHODS.register("clip")
class CLIP(CLIPObjective):
    name = "clip"
    modality = "image-text"
    Params = CLIPParams

    def __init__(self, backbone: nn.Module, params: CLIPParams = CLIPParams(), tokenizer: Optional[CaptionTokenizer] = None) -> None:
        super().__init__()
        self.params = params
        self.tokenizer = tokenizer
        vocab = tokenizer.vocab_size if tokenizer is not None else params.vocab_size
        eot = tokenizer.eot_id if tokenizer is not None else 3
        if params.text_tower == "bow":
            text: nn.Module = BagOfWordsText(vocab, params.text_width, params.embed_dim)
        else:
            text = TextTransformer(vocab, params.context_length, params.text_width, params.text_layers,
                                   params.text_heads, params.embed_dim, eot, params.text_mlp_ratio)
        self.model = CLIPModel(backbone, text, params.embed_dim, params.init_logit_scale, params.max_logit_scale)

    @classmethod
    def from_state_dict(cls, backbone: nn.Module, params: CLIPParams, state: dict) -> "CLIP":  # type: ignore[override]
        """Rebuild a trained CLIP (its tokenizer, hence vocabulary size, comes from the state dict)."""
        extra = state.get("_extra_state") or {}
        if not extra.get("tokenizer"):
            raise ConfigError("this CLIP state dict holds no tokenizer; it was not written by clpoison's CLIP method")
        m = cls(backbone, params, CaptionTokenizer.from_str(extra["tokenizer"]))
        m.load_state_dict(state)
        return m

    # the tokenizer is part of the checkpoint
    def get_extra_state(self) -> Any:
        return {"tokenizer": None if self.tokenizer is None else self.tokenizer.to_str()}

    def set_extra_state(self, state: Any) -> None:
        if isinstance(state, dict) and state.get("tokenizer"):
            self.tokenizer = CaptionTokenizer.from_str(state["tokenizer"])


