"""CLIP model: an image tower and a text tower mapped into one embedding space, with a learnable temperature.

Radford et al., ICML 2021. The image tower is any foundation backbone (``build_backbone``: CIFAR-stem ResNets,
ConvNet) followed by a linear projection to ``embed_dim``; the text tower is
:class:`~clpoison.models.text.TextTransformer`. ``logit_scale`` is stored as a log, initialised to log(1/0.07) and
its exponential is clamped at 100 (CLIP §2.5; open_clip clamps the log to [0, ln 100]).

Example::

    >>> import torch
    >>> from clpoison.models import build_backbone
    >>> from clpoison.models.clip_model import CLIPModel
    >>> from clpoison.models.text import TextTransformer
    >>> m = CLIPModel(build_backbone("resnet10", 8, 2), TextTransformer(300, 16, 32, 1, 4, 24), embed_dim=24)
    >>> img, txt = m.encode_image(torch.zeros(2, 3, 32, 32)), m.encode_text(torch.tensor([[2, 9, 3], [2, 7, 3]]))
    >>> img.shape, txt.shape, round(m.scale().item(), 2)
    (torch.Size([2, 24]), torch.Size([2, 24]), 14.29)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class CLIPModel(nn.Module):
    def __init__(
        self, image_encoder: nn.Module, text_encoder: nn.Module, embed_dim: int, init_logit_scale: float = 1 / 0.07,
        max_logit_scale: float = 100.0,
    ) -> None:
        super().__init__()
        self.visual = image_encoder
        self.image_projection = nn.Linear(image_encoder.feature_dim, embed_dim, bias=False)
        self.text = text_encoder
        self.logit_scale = nn.Parameter(torch.tensor(math.log(init_logit_scale)))
        self.max_log_scale = math.log(max_logit_scale)
        nn.init.normal_(self.image_projection.weight, std=image_encoder.feature_dim**-0.5)

    def scale(self) -> torch.Tensor:
        return self.logit_scale.clamp(0.0, self.max_log_scale).exp()

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        z = self.image_projection(self.visual(images))
        return F.normalize(z, dim=-1) if normalize else z

    def encode_text(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        z = self.text(tokens)
        return F.normalize(z, dim=-1) if normalize else z

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.encode_image(images), self.encode_text(tokens), self.scale()
