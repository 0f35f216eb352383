"""The CTRL frequency-domain trigger (Li et al., "An Embarrassingly Simple Backdoor Attack on Self-supervised
Learning", ICCV 2023; official ``meet-cjli/CTRL`` ``utils/frequency.py``; ``neighbours.md`` §2), batched on the
images' device.

Per image: RGB → YCrCb (the official code's "YUV" is OpenCV's ``COLOR_RGB2YCrCb``); an orthonormal 2-D DCT-II of
every ``window`` × ``window`` block of the chosen channels (official: Cr and Cb); ``magnitude`` (0–255 scale) added
to the chosen coefficients of every block (official at 32 px: (15, 15) and (31, 31)); inverse DCT; back to RGB;
rounded and clamped to uint8. The official code uses magnitude 50 on the training poisons and 100 when measuring
ASR (``CTRL_correctness``); here both are parameters of the caller.

Deviation: OpenCV converts colour on uint8 images, so the official code rounds (and, by ``astype(np.uint8)``,
wraps out-of-range values) between every step; here the colour conversions and the DCT run in float and only the
result is rounded and clamped — the added coefficients can be removed again exactly before that last step
(:func:`ctrl_float` / :func:`ctrl_remove`, tested).

Example::

    >>> import torch
    >>> x = torch.full((2, 3, 32, 32), 128, dtype=torch.uint8)
    >>> y = ctrl_apply(x, magnitude=100.0)
    >>> y.dtype, bool((y != x).any()), int(x[0, 0, 0, 0])
    (torch.uint8, True, 128)
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from ..errors import ConfigError

# OpenCV's 8-bit RGB <-> YCrCb (ITU-R BT.601, delta 128)
_KR, _KB = 0.299, 0.114
_KG = 1 - _KR - _KB
_CR, _CB = 0.713, 0.564


def rgb_to_ycrcb(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    y = _KR * r + _KG * g + _KB * b
    return torch.stack([y, (r - y) * _CR + 128, (b - y) * _CB + 128], 1)


def ycrcb_to_rgb(x: torch.Tensor) -> torch.Tensor:
    y, cr, cb = x[:, 0], x[:, 1] - 128, x[:, 2] - 128
    r = y + cr / _CR
    b = y + cb / _CB
    g = (y - _KR * r - _KB * b) / _KG
    return torch.stack([r, g, b], 1)


def dct_matrix(n: int, dtype: torch.dtype = torch.float64, device: torch.device | None = None) -> torch.Tensor:
    """The orthonormal DCT-II matrix ``D`` (``D @ x`` transforms a length-``n`` signal; ``D.T`` inverts it)."""
    k = torch.arange(n, dtype=dtype, device=device).view(-1, 1)
    i = torch.arange(n, dtype=dtype, device=device).view(1, -1)
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d


def _check(h: int, w: int, window: int, positions: Sequence[Sequence[int]], channels: Sequence[int]) -> None:
    if window < 1 or h % window or w % window:
        raise ConfigError(f"trigger.window={window} must divide the image size {h}x{w}")
    for p in positions:
        if len(p) != 2 or not all(0 <= int(v) < window for v in p):
            raise ConfigError(f"trigger.frequencies={list(map(list, positions))}: each must be [u, v] with 0 <= u, v < window")
    if not channels or not all(c in (0, 1, 2) for c in channels):
        raise ConfigError(f"trigger.channels={list(channels)} must name YCrCb channels 0 (Y), 1 (Cr), 2 (Cb)")


def _blocks_shift(coef_shape: tuple[int, int], window: int, positions: Sequence[Sequence[int]], magnitude: float,
                  dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The per-block DCT offset (H, W): ``magnitude`` at each position of every window."""
    h, w = coef_shape
    delta = torch.zeros(window, window, dtype=dtype, device=device)
    for u, v in positions:
        delta[int(u), int(v)] += magnitude
    return delta.repeat(h // window, w // window)


def _blockwise(x: torch.Tensor, d: torch.Tensor, inverse: bool) -> torch.Tensor:
    """Block DCT (or inverse) of (N, C, H, W) with square blocks of size ``len(d)``."""
    n, c, h, w = x.shape
    k = len(d)
    blocks = x.reshape(n, c, h // k, k, w // k, k).permute(0, 1, 2, 4, 3, 5)
    m = d.t() if inverse else d
    out = m @ blocks @ m.t()
    return out.permute(0, 1, 2, 4, 3, 5).reshape(n, c, h, w)


def ctrl_float(images: torch.Tensor, magnitude: float, window: int = 32,
               positions: Sequence[Sequence[int]] = ((15, 15), (31, 31)), channels: Sequence[int] = (1, 2),
               sign: float = 1.0) -> torch.Tensor:
    """The triggered images in float (0–255 scale, not rounded or clamped); ``sign=-1`` removes the trigger."""
    n, _, h, w = images.shape
    _check(h, w, window, positions, channels)
    x = rgb_to_ycrcb(images.to(torch.float64))
    d = dct_matrix(window, torch.float64, images.device)
    ch = list(channels)
    coef = _blockwise(x[:, ch], d, inverse=False)
    coef = coef + sign * _blocks_shift((h, w), window, positions, magnitude, coef.dtype, coef.device)
    x = x.clone()
    x[:, ch] = _blockwise(coef, d, inverse=True)
    return ycrcb_to_rgb(x)


def ctrl_remove(images: torch.Tensor, magnitude: float, window: int = 32,
                positions: Sequence[Sequence[int]] = ((15, 15), (31, 31)), channels: Sequence[int] = (1, 2)) -> torch.Tensor:
    """Subtract the trigger's coefficients from float images (the inverse of :func:`ctrl_float`)."""
    return ctrl_float(images, magnitude, window, positions, channels, sign=-1.0)


def ctrl_apply(images: torch.Tensor, magnitude: float, window: int = 32,
               positions: Sequence[Sequence[int]] = ((15, 15), (31, 31)), channels: Sequence[int] = (1, 2),
               chunk: int = 4096) -> torch.Tensor:
    """uint8 images with the CTRL trigger (a new tensor; the input is not modified), ``chunk`` images at a time."""
    if images.dtype != torch.uint8:
        raise ConfigError("the CTRL trigger applies to uint8 images")
    out = torch.empty_like(images)
    for s in range(0, len(images), chunk):
        y = ctrl_float(images[s:s + chunk], magnitude, window, positions, channels)
        out[s:s + chunk] = y.round().clamp(0, 255).to(torch.uint8)
    return out
