"""View samplers: *where* each augmented view of an image is cropped from.

A view sampler returns, for a batch of images with valid sizes (B,2) = (h, w), one crop box per view,
as float tensors (B,4) = (x0, y0, x1, y1) in pixel coordinates of the image's valid area. Augmentation
(:mod:`clpoison.data.augment`) then crops, resizes and flips in one batched ``grid_sample``.

Keeping this a separate component lets a defense replace it: the localized-cropping defense of CorruptEncoder
draws the second view inside the first view's box.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from ..errors import ConfigError
from ..registry import Registry

VIEW_SAMPLERS: Registry[type] = Registry("view sampler")


def sample_rrc_boxes(
    sizes: torch.Tensor,
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    attempts: int = 10,
) -> torch.Tensor:
    """Batched RandomResizedCrop boxes, following torchvision's rejection sampler.

    For each image: up to ``attempts`` candidates with area ~ U(scale)·h·w and log aspect ratio ~ U(log ratio);
    the first that fits is kept, otherwise the centre crop with the ratio clamped into ``ratio``. Unlike
    torchvision, box sides and offsets are continuous (sub-pixel), which is what a bilinear resampler wants.
    """
    sizes = sizes.to(torch.float32)
    b, dev = sizes.shape[0], sizes.device
    h, w = sizes[:, 0:1], sizes[:, 1:2]
    area = h * w
    target = area * torch.empty(b, attempts, device=dev).uniform_(scale[0], scale[1])
    logr = torch.empty(b, attempts, device=dev).uniform_(math.log(ratio[0]), math.log(ratio[1]))
    ar = torch.exp(logr)
    cw = torch.sqrt(target * ar)
    ch = torch.sqrt(target / ar)
    ok = (cw <= w) & (ch <= h) & (cw > 0) & (ch > 0)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((b,), -1, device=dev))
    has = first >= 0
    idx = first.clamp(min=0).unsqueeze(1)
    cw = cw.gather(1, idx).squeeze(1)
    ch = ch.gather(1, idx).squeeze(1)
    h1, w1 = h.squeeze(1), w.squeeze(1)
    # fallback: whole image, ratio clamped
    in_ratio = w1 / h1
    fw = torch.where(in_ratio < ratio[0], w1, torch.where(in_ratio > ratio[1], h1 * ratio[1], w1))
    fh = torch.where(in_ratio < ratio[0], w1 / ratio[0], torch.where(in_ratio > ratio[1], h1, h1))
    cw = torch.where(has, cw, fw)
    ch = torch.where(has, ch, fh)
    x0 = torch.where(has, torch.rand(b, device=dev) * (w1 - cw), (w1 - cw) / 2)
    y0 = torch.where(has, torch.rand(b, device=dev) * (h1 - ch), (h1 - ch) / 2)
    return torch.stack([x0, y0, x0 + cw, y0 + ch], dim=1)


class ViewSampler:
    """Base class: ``sample(sizes, n_views)`` → list of (B,4) boxes."""

    def sample(self, sizes: torch.Tensor, n_views: int = 2) -> list[torch.Tensor]:
        raise NotImplementedError


@VIEW_SAMPLERS.register("independent")
class IndependentRRCSampler(ViewSampler):
    """The standard sampler: every view is an independent RandomResizedCrop of the whole image."""

    def __init__(self, scale: Sequence[float] = (0.2, 1.0), ratio: Sequence[float] = (3 / 4, 4 / 3)) -> None:
        scale, ratio = tuple(float(s) for s in scale), tuple(float(r) for r in ratio)
        if not (0 < scale[0] <= scale[1] <= 1):
            raise ConfigError(f"augment.crop_scale {list(scale)} must satisfy 0 < low <= high <= 1")
        if not (0 < ratio[0] <= ratio[1]):
            raise ConfigError(f"augment.crop_ratio {list(ratio)} must satisfy 0 < low <= high")
        self.scale, self.ratio = scale, ratio

    def sample(self, sizes: torch.Tensor, n_views: int = 2) -> list[torch.Tensor]:
        return [sample_rrc_boxes(sizes, self.scale, self.ratio) for _ in range(n_views)]
