"""clpoison's CLIP interface over two foreign towers (:class:`TowersCLIP`) and what loading a pretrained CLIP returns
(:class:`PretrainedCLIP`) — shared by the loaders of :mod:`clpoison.models.pretrained` (open_clip) and
:mod:`clpoison.models.hf_clip` (Hugging Face)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class TowersCLIP(nn.Module):
    """clpoison's CLIP interface over two foreign towers: ``visual(images)`` and ``text(tokens)`` give projected
    features; embeddings are L2-normalised and the logit scale (stored as a log) is clamped at ``max_logit_scale``."""

    def __init__(self, visual: nn.Module, text: nn.Module, logit_scale: torch.Tensor, max_logit_scale: float = 100.0
                 ) -> None:
        super().__init__()
        self.visual, self.text = visual, text
        self.logit_scale = logit_scale if isinstance(logit_scale, nn.Parameter) else nn.Parameter(logit_scale.clone())
        self.max_logit_scale = max_logit_scale

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.visual(x), dim=-1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text(tokens), dim=-1)

    def scale(self) -> torch.Tensor:
        return self.logit_scale.exp().clamp(max=self.max_logit_scale)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor):
        return self.encode_image(images), self.encode_text(tokens), self.scale()


@dataclass
class PretrainedCLIP:
    """A loaded pretrained CLIP: the model, its tokenizer, preprocessing and context length."""

    model: nn.Module
    tokenizer: Any
    preprocessing: dict[str, Any]
    context_length: int
    embed_dim: int
    format: str
    path: str
    tower: dict[str, Any] = field(default_factory=dict)  # what the image tower is (arch, width, layers, ...)
