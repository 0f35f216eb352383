"""Batched, device-side augmentation for contrastive learning.

Images arrive as a uint8 batch already on the device. Each view is made by

1. a crop box from a :mod:`view sampler <clpoison.data.views>` (RandomResizedCrop by default),
2. crop + resize + horizontal flip fused into one ``affine_grid``/``grid_sample`` call (bilinear),
3. colour jitter (brightness, contrast, saturation, hue; torchvision semantics, clamped after each op,
   per-image factors, applied with probability ``jitter_p``; one random op order per batch, as kornia does),
4. random grayscale, Gaussian blur (per-image sigma), solarisation,
5. normalisation.

Everything is vectorised over the batch; randomness comes from torch's generator on the device, so a seeded run
is reproducible. Presets: ``simclr`` (Chen et al. 2020), ``mocov2`` ("aug+", Chen et al. 2020b) and ``byol``
(Grill et al. 2020, asymmetric blur/solarisation).

Differentiable path: a float batch in [0, 1] that requires grad (with grad mode on) gets views that are
differentiable w.r.t. it, e.g. for attacks that optimise an additive noise through the augmentation. Each op
branches on ``x.requires_grad``: in the graph it works out of place (``_apply_subset`` writes the subset back with
an out-of-place ``index_put``); otherwise (uint8 input, or float input without grad) it keeps the fast in-place
form. Both forms compute the same values and draw the same random numbers in the same order, so ``aug(u)`` and
``aug((u.float() / 255).requires_grad_())`` give identical views under the same seed.
:class:`TwoViewAugment` never modifies its input.

Example::

    >>> import torch
    >>> from clpoison.data.augment import AugmentConfig, TwoViewAugment
    >>> aug = TwoViewAugment(AugmentConfig.preset("simclr", out_size=32))
    >>> x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    >>> v1, v2 = aug(x)
    >>> v1.shape
    torch.Size([8, 3, 32, 32])
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .views import VIEW_SAMPLERS, ViewSampler

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


# ----------------------------------------------------------------------------------------------------------------
# functional ops on float images in [0,1], (B,3,H,W)


def rgb_to_gray(x: torch.Tensor) -> torch.Tensor:
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


# The colour ops below clamp to [0, 1] after each op, as torchvision does. If ``x`` does not require grad they work
# in place on it (the caller passes a tensor it owns); if it does, they work out of place, with the same values.


def adjust_brightness(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    f = f.view(-1, 1, 1, 1)
    if x.requires_grad:
        return (x * f).clamp(0, 1)
    return x.mul_(f).clamp_(0, 1)


def adjust_contrast(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    mean = rgb_to_gray(x).mean(dim=(1, 2, 3), keepdim=True)
    f = f.view(-1, 1, 1, 1)
    if x.requires_grad:
        return (x * f + (1 - f) * mean).clamp(0, 1)
    return x.mul_(f).add_((1 - f) * mean).clamp_(0, 1)


def adjust_saturation(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    # NB: the gray image is taken *after* scaling by f, i.e. f·x + (1 − f)·gray(f·x), not torchvision's
    # f·x + (1 − f)·gray(x). Kept as is so that seeded runs reproduce; both branches compute the same.
    f = f.view(-1, 1, 1, 1)
    if x.requires_grad:
        xf = x * f
        return (xf + rgb_to_gray(xf) * (1 - f)).clamp(0, 1)
    return x.mul_(f).add_(rgb_to_gray(x).mul_(1 - f)).clamp_(0, 1)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate hue by ``shift`` (fraction of the circle, per image) in HSV space, as torchvision does.

    V (max) and S (max − min) are unchanged by a hue rotation, so the output is computed directly from the
    rotated hue with the closed-form HSV→RGB map ``c_k = V − (max − min)·clamp(min(k, 4 − k), 0, 1)``.
    """
    maxc, argmax = x.max(1, keepdim=True)
    minc = x.amin(1, keepdim=True)
    delta = maxc - minc
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    # hue in sixths of a turn: max=r → (g−b)/Δ; max=g → 2 + (b−r)/Δ; max=b → 4 + (r−g)/Δ
    diff = torch.where(argmax == 0, g - b, torch.where(argmax == 1, b - r, r - g))
    grad = x.requires_grad
    if grad:
        h = diff / (delta + 1e-12) + argmax.to(x.dtype) * 2.0 + shift.view(-1, 1, 1, 1) * 6.0
    else:
        h = diff.div_(delta + 1e-12).add_(argmax.to(x.dtype) * 2.0).add_(shift.view(-1, 1, 1, 1) * 6.0)
    n = torch.tensor([5.0, 3.0, 1.0], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    k = torch.remainder(h + n, 6.0)
    t = torch.minimum(k, 4.0 - k)
    return maxc - delta * (t.clamp(0.0, 1.0) if grad else t.clamp_(0.0, 1.0))


def crop_resize_flip(
    x: torch.Tensor,
    boxes: torch.Tensor,
    out_size: tuple[int, int],
    flip: Optional[torch.Tensor] = None,
    valid: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Crop each image to its box (x0,y0,x1,y1 in pixels of the canvas), resize to ``out_size``, flip if asked.

    One ``grid_sample`` for the whole batch; pixels are squares [i, i+1), matching ``align_corners=False``.
    ``valid`` (B,2) = valid (h, w) of images on a zero-padded canvas: sample points are clamped to the centres of
    the valid border pixels, so bilinear taps never read the padding (the same "border" behaviour a full-canvas
    image gets from ``padding_mode="border"``).
    """
    b, _, hc, wc = x.shape
    x0, y0, x1, y1 = boxes.to(x.dtype).unbind(1)
    ax, ay = (x1 - x0) / wc, (y1 - y0) / hc
    bx, by = (x0 + x1) / wc - 1, (y0 + y1) / hc - 1
    if flip is not None:
        ax = torch.where(flip, -ax, ax)
    theta = torch.zeros(b, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = ax, bx, ay, by
    grid = F.affine_grid(theta, [b, x.shape[1], out_size[0], out_size[1]], align_corners=False)
    if valid is not None:
        vh, vw = valid.to(grid.dtype).unbind(1)
        gx = grid[..., 0].clamp(min=1.0 / wc - 1.0).minimum(((2.0 * vw - 1.0) / wc - 1.0).view(b, 1, 1))
        gy = grid[..., 1].clamp(min=1.0 / hc - 1.0).minimum(((2.0 * vh - 1.0) / hc - 1.0).view(b, 1, 1))
        grid = torch.stack([gx, gy], dim=-1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _apply_subset(x: torch.Tensor, mask: torch.Tensor, fn) -> torch.Tensor:
    """``fn(x[idx], idx)`` written back into the rows of ``x`` where ``mask`` is set (out of place if in a graph)."""
    idx = mask.nonzero(as_tuple=True)[0]
    if idx.numel() == 0:
        return x
    if idx.numel() == x.shape[0]:
        return fn(x, idx)
    if x.requires_grad:
        return x.index_put((idx,), fn(x[idx], idx))
    out = x.clone()
    out[idx] = fn(x[idx], idx)
    return out


# ----------------------------------------------------------------------------------------------------------------
# config


@dataclass
class AugmentConfig:
    """Augmentation parameters. ``blur_p`` and ``solarize_p`` are per view (view 1, view 2)."""

    out_size: int = 32
    sampler: str = "independent"
    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: tuple[float, float] = (0.0, 0.0)
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel_frac: float = 0.1
    solarize_p: tuple[float, float] = (0.0, 0.0)
    mean: tuple[float, float, float] = CIFAR_MEAN
    std: tuple[float, float, float] = CIFAR_STD

    def __post_init__(self) -> None:
        for f in ("crop_scale", "crop_ratio", "jitter", "blur_p", "blur_sigma", "solarize_p", "mean", "std"):
            v = getattr(self, f)
            if isinstance(v, (int, float)):
                v = (v, v) if f in ("blur_p", "solarize_p") else v
            setattr(self, f, tuple(float(a) for a in v))
        lens = {"crop_scale": 2, "crop_ratio": 2, "jitter": 4, "blur_p": 2, "blur_sigma": 2, "solarize_p": 2, "mean": 3, "std": 3}
        for f, n in lens.items():
            if len(getattr(self, f)) != n:
                raise ConfigError(f"augment.{f} needs {n} numbers, got {list(getattr(self, f))}")
        for f in ("flip_p", "jitter_p", "gray_p"):
            if not 0 <= getattr(self, f) <= 1:
                raise ConfigError(f"augment.{f}={getattr(self, f)} must be a probability in [0, 1]")
        for f in ("blur_p", "solarize_p"):
            if not all(0 <= p <= 1 for p in getattr(self, f)):
                raise ConfigError(f"augment.{f}={list(getattr(self, f))} must be probabilities in [0, 1]")
        if self.out_size < 1:
            raise ConfigError(f"augment.out_size={self.out_size} must be a positive number of pixels")
        if any(j < 0 for j in self.jitter) or self.jitter[3] > 0.5:
            raise ConfigError(f"augment.jitter={list(self.jitter)} must be >= 0 with hue <= 0.5")
        if any(s <= 0 for s in self.std):
            raise ConfigError("augment.std values must be positive")

    @staticmethod
    def preset(name: str, **overrides) -> "AugmentConfig":
        """``simclr``, ``mocov2`` (aug+: blur p=0.5 on both views) or ``byol`` (blur 1.0/0.1, solarise 0/0.2)."""
        base = {
            "simclr": dict(),
            "mocov2": dict(blur_p=(0.5, 0.5)),
            "byol": dict(jitter=(0.4, 0.4, 0.2, 0.1), blur_p=(1.0, 0.1), solarize_p=(0.0, 0.2)),
            "none": dict(crop_scale=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, gray_p=0.0),
        }
        if name not in base:
            raise ConfigError(f"unknown augmentation preset '{name}'; choose one of: {', '.join(base)}")
        return AugmentConfig(**{**base[name], **overrides})

    def to_dict(self) -> dict:
        return asdict(self)


def make_sampler(cfg: AugmentConfig, **kwargs) -> ViewSampler:
    cls = VIEW_SAMPLERS.get(cfg.sampler)
    return cls(scale=cfg.crop_scale, ratio=cfg.crop_ratio, **kwargs)


# ----------------------------------------------------------------------------------------------------------------
# the augmentation module


class ViewAugment(torch.nn.Module):
    """Photometric augmentation + normalisation of float views (crop is done by the caller).

    A view that does not require grad may be modified in place (pass a tensor you own); one that requires grad is
    left untouched and the output is differentiable w.r.t. it.
    """

    def __init__(self, cfg: AugmentConfig, view: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.blur_p = cfg.blur_p[view]
        self.solarize_p = cfg.solarize_p[view]
        self.register_buffer("mean", torch.tensor(cfg.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.std).view(1, 3, 1, 1), persistent=False)

    def color_jitter(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        bri, con, sat, hue = self.cfg.jitter
        n, dev = x.shape[0], x.device

        def factor(s: float) -> torch.Tensor:
            return torch.empty(n, device=dev).uniform_(max(0.0, 1 - s), 1 + s)

        ops = []
        if bri > 0:
            ops.append((adjust_brightness, factor(bri)))
        if con > 0:
            ops.append((adjust_contrast, factor(con)))
        if sat > 0:
            ops.append((adjust_saturation, factor(sat)))
        if hue > 0:
            ops.append((adjust_hue, torch.empty(n, device=dev).uniform_(-hue, hue)))
        for i in torch.randperm(len(ops)).tolist():
            fn, f = ops[i]
            x = fn(x, f)
        return x

    def blur(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        from kornia.filters import gaussian_blur2d

        k = max(3, int(round(self.cfg.blur_kernel_frac * x.shape[-1])) // 2 * 2 + 1)
        sigma = torch.empty(x.shape[0], device=x.device).uniform_(*self.cfg.blur_sigma)
        return gaussian_blur2d(x, (k, k), torch.stack([sigma, sigma], 1), border_type="reflect")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, dev = x.shape[0], x.device
        cfg = self.cfg
        if cfg.jitter_p > 0 and any(j > 0 for j in cfg.jitter):
            x = _apply_subset(x, torch.rand(n, device=dev) < cfg.jitter_p, self.color_jitter)
        if cfg.gray_p > 0:
            x = _apply_subset(x, torch.rand(n, device=dev) < cfg.gray_p, lambda v, i: rgb_to_gray(v).expand(-1, 3, -1, -1))
        if self.blur_p > 0:
            x = _apply_subset(x, torch.rand(n, device=dev) < self.blur_p, self.blur)
        if self.solarize_p > 0:
            x = _apply_subset(x, torch.rand(n, device=dev) < self.solarize_p, lambda v, i: torch.where(v < 0.5, v, 1 - v))
        return (x - self.mean) / self.std


class TwoViewAugment(torch.nn.Module):
    """Two augmented views of a uint8 batch: view sampler → crop/resize/flip → photometric → normalise.

    A float batch in [0, 1] is accepted as well (same views as its uint8 source under the same seed); if it
    requires grad, the views are differentiable w.r.t. it. The input batch is never modified.
    """

    def __init__(self, cfg: AugmentConfig, sampler: Optional[ViewSampler] = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.sampler = sampler if sampler is not None else make_sampler(cfg)
        self.views = torch.nn.ModuleList([ViewAugment(cfg, 0), ViewAugment(cfg, 1)])

    def forward(self, images: torch.Tensor, sizes: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        x = images.float().div_(255.0) if images.dtype == torch.uint8 else images
        n = x.shape[0]
        valid = None  # images on a padded canvas: keep bilinear taps inside each image's valid area
        if sizes is None:
            sizes = torch.tensor([[x.shape[2], x.shape[3]]], device=x.device).expand(n, 2)
        else:
            sizes = sizes.to(x.device)
            valid = sizes
        boxes = self.sampler.sample(sizes, 2)
        out = []
        size = (self.cfg.out_size, self.cfg.out_size)
        for view, box in zip(self.views, boxes):
            flip = torch.rand(n, device=x.device) < self.cfg.flip_p
            out.append(view(crop_resize_flip(x, box, size, flip, valid)))
        return out[0], out[1]


class EvalTransform(torch.nn.Module):
    """Deterministic test-time transform: uint8 → float, resize to ``out_size`` if needed, normalise."""

    def __init__(self, out_size: int = 32, mean: Sequence[float] = CIFAR_MEAN, std: Sequence[float] = CIFAR_STD) -> None:
        super().__init__()
        self.out_size = out_size
        self.register_buffer("mean", torch.tensor(tuple(mean)).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(tuple(std)).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float().div(255.0) if images.dtype == torch.uint8 else images
        if x.shape[-1] != self.out_size or x.shape[-2] != self.out_size:
            x = F.interpolate(x, size=(self.out_size, self.out_size), mode="bilinear", antialias=True, align_corners=False)
        return (x - self.mean.to(x.device)) / self.std.to(x.device)
