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


def enlarge_boxes(boxes: torch.Tensor, sizes: torch.Tensor, delta: float) -> torch.Tensor:
    """Boxes (B,4) grown by ``delta`` × (box width, box height) on every side, clipped to the image (B,2)=(h,w)."""
    x0, y0, x1, y1 = boxes.unbind(1)
    dw, dh = delta * (x1 - x0), delta * (y1 - y0)
    h, w = sizes.to(boxes.dtype).unbind(1)
    return torch.stack([(x0 - dw).clamp(min=0), (y0 - dh).clamp(min=0),
                        torch.minimum(x1 + dw, w), torch.minimum(y1 + dh, h)], dim=1)


@VIEW_SAMPLERS.register("localized")
class LocalizedCropSampler(ViewSampler):
    """Localized cropping (CorruptEncoder's defense, Zhang et al. CVPR 2024, arXiv 2211.08229; official
    ``train_moco/moco/loader_lc.py``): the second view is drawn *inside* the first view's box enlarged by
    ``delta`` × (box h, box w) on every side (clipped to the image), so both views stay spatially close.

    View 1: a RandomResizedCrop box (``scale``, ``ratio``). View 2: up to ``attempts`` candidates with area
    ``l_area · U(min_area / l_area, 1)`` (``min_area = scale[0] · image area``, ``l_area`` = enlarged region's
    area) and log-uniform ratio, placed uniformly inside the region; on failure, view 1's size placed uniformly
    inside the region. ``swap`` exchanges the two views per image at random (the official code swaps q and k).
    Only the boxes change, so it works with every two-view method (SimCLR, MoCo v2, BYOL).

    >>> s = LocalizedCropSampler(delta=0.2, swap=False)
    >>> b1, b2 = s.sample(torch.tensor([[32, 64]] * 4), 2)
    >>> bool((b2[:, :2] >= enlarge_boxes(b1, torch.tensor([[32, 64]] * 4), 0.2)[:, :2] - 1e-4).all())
    True
    """

    def __init__(self, scale: Sequence[float] = (0.2, 1.0), ratio: Sequence[float] = (3 / 4, 4 / 3),
                 delta: float = 0.2, attempts: int = 10, swap: bool = True) -> None:
        self.base = IndependentRRCSampler(scale, ratio)
        self.scale, self.ratio = self.base.scale, self.base.ratio
        if not 0.0 <= float(delta):
            raise ConfigError(f"localized cropping delta={delta} must be >= 0 (the paper uses 0.2)")
        self.delta, self.attempts, self.swap = float(delta), int(attempts), bool(swap)

    def second_view(self, first: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
        region = enlarge_boxes(first, sizes, self.delta)
        b, dev = first.shape[0], first.device
        rx0, ry0, rx1, ry1 = region.unbind(1)
        rw, rh = (rx1 - rx0).unsqueeze(1), (ry1 - ry0).unsqueeze(1)
        l_area = rw * rh
        min_area = self.scale[0] * sizes.to(first.dtype).prod(1, keepdim=True)
        lo = (min_area / l_area).clamp(max=1.0)  # U(min/l, 1); when min_area > l_area the draw is l_area itself
        target = l_area * (lo + (1 - lo) * torch.rand(b, self.attempts, device=dev))
        ar = torch.exp(torch.empty(b, self.attempts, device=dev).uniform_(math.log(self.ratio[0]), math.log(self.ratio[1])))
        cw, ch = torch.sqrt(target * ar), torch.sqrt(target / ar)
        ok = (cw <= rw) & (ch <= rh)
        has = ok.any(1)
        idx = ok.float().argmax(1, keepdim=True)
        cw, ch = cw.gather(1, idx).squeeze(1), ch.gather(1, idx).squeeze(1)
        fw, fh = first[:, 2] - first[:, 0], first[:, 3] - first[:, 1]  # fallback: view 1's size (fits the region)
        cw, ch = torch.where(has, cw, fw), torch.where(has, ch, fh)
        x0 = rx0 + torch.rand(b, device=dev) * (rw.squeeze(1) - cw).clamp(min=0)
        y0 = ry0 + torch.rand(b, device=dev) * (rh.squeeze(1) - ch).clamp(min=0)
        return torch.stack([x0, y0, x0 + cw, y0 + ch], dim=1)

    def sample(self, sizes: torch.Tensor, n_views: int = 2) -> list[torch.Tensor]:
        first = sample_rrc_boxes(sizes, self.scale, self.ratio)
        second = self.second_view(first, sizes)
        if self.swap:
            s = (torch.rand(first.shape[0], device=first.device) < 0.5).unsqueeze(1)
            first, second = torch.where(s, second, first), torch.where(s, first, second)
        extra = [self.second_view(first, sizes) for _ in range(max(0, n_views - 2))]
        return [first, second, *extra][:n_views]
