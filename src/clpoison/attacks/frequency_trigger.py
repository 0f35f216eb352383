"""The CTRL frequency-domain trigger (Li et al., "An Embarrassingly Simple Backdoor Attack on Self-supervised
Learning", ICCV 2023; official ``meet-cjli/CTRL`` ``utils/frequency.py``; ``neighbours.md`` §2), batched on the
images' device.

Per image: RGB → YCrCb (the official code's "YUV" is OpenCV's ``COLOR_RGB2YCrCb``); an orthonormal 2-D DCT-II of
every ``window`` × ``window`` block of the chosen channels (official: Cr and Cb); ``magnitude`` (0–255 scale) added
to the chosen coefficients of every block (official at 32 px: (15, 15) and (31, 31)); inverse DCT; back to RGB;
rounded and clamped to uint8. The official code uses magnitude 50 on the training poisons and 100 when measuring
ASR (``CTRL_correctness``); :class:`FrequencyTrigger` (config ``trigger: {type: ctrl, magnitude: ...}``) applies
one magnitude at poison and at evaluation time (a deviation, so that the evaluated trigger is the planted one).

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

import base64
import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import torch

from ..errors import ConfigError, DataError
from ..utils.io import sha256_tensor

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


@dataclass
class CTRLSpec:
    """The CTRL trigger's parameters (official defaults at 32 px; every field is recorded in the manifest)."""

    magnitude: float = 100.0  # added to each chosen coefficient (0–255 scale)
    window: int = 32  # DCT block size; must divide the image size
    frequencies: Sequence[Sequence[int]] = ((15, 15), (31, 31))  # (u, v) within a block
    channels: Sequence[int] = (1, 2)  # YCrCb channels: 0 Y, 1 Cr, 2 Cb

    def __post_init__(self) -> None:
        try:
            self.magnitude = float(self.magnitude)
            self.window = int(self.window)
            self.frequencies = tuple(tuple(int(v) for v in p) for p in self.frequencies)
            self.channels = tuple(int(c) for c in self.channels)
        except (TypeError, ValueError):
            raise ConfigError("trigger: magnitude must be a number, window an integer, frequencies a list of [u, v] "
                              "and channels a list of integers") from None
        if not math.isfinite(self.magnitude) or self.magnitude <= 0:
            raise ConfigError(f"trigger.magnitude={self.magnitude} must be a positive number (official: 100)")
        if self.window < 1 or not self.frequencies:
            raise ConfigError(f"trigger.window={self.window} must be >= 1 and trigger.frequencies non-empty")
        _check(self.window, self.window, self.window, self.frequencies, self.channels)

    def to_dict(self) -> dict:
        return {"type": "ctrl", "magnitude": self.magnitude, "window": self.window,
                "frequencies": [list(p) for p in self.frequencies], "channels": list(self.channels)}

    @classmethod
    def from_dict(cls, d: Optional[dict], where: str = "trigger") -> "CTRLSpec":
        d = {k: v for k, v in dict(d or {}).items() if k != "type"}
        names = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown key(s) {unknown} in {where} (type ctrl); valid keys: type, {', '.join(sorted(names))}")
        return cls(**d)


class FrequencyTrigger:
    """The CTRL trigger behind the same interface as the patch :class:`~.triggers.Trigger`: ``apply`` (seed and
    sizes are accepted and unused: the trigger is the same on every image), ``to_dict`` / ``from_dict``, ``sha256``
    and ``png``. Its ``patch`` — what the manifest stores and ``trigger.png`` shows — is the trigger applied to a
    mid-grey ``window`` × ``window`` image, so a recorded trigger is checked by recomputing it."""

    kind = "ctrl"

    def __init__(self, spec: Union[CTRLSpec, dict, None] = None) -> None:
        self.spec = spec if isinstance(spec, CTRLSpec) else CTRLSpec.from_dict(spec)
        grey = torch.full((1, 3, self.spec.window, self.spec.window), 128, dtype=torch.uint8)
        self.patch = self.apply(grey)[0]

    def check_fits(self, height: int, width: int) -> None:
        w = self.spec.window
        if height % w or width % w:
            raise ConfigError(f"trigger.window={w} must divide the {height}x{width} images; use a window that does "
                              f"(e.g. {math.gcd(height, width)})")

    def apply(self, images: torch.Tensor, seed: Any = 0, sizes: Optional[torch.Tensor] = None) -> torch.Tensor:
        """A triggered uint8 copy of (N, 3, H, W) images on their device (the input is not modified)."""
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise DataError(f"the CTRL trigger needs uint8 (N,3,H,W) images, got {tuple(images.shape)} {images.dtype}")
        if sizes is not None and bool((sizes != torch.tensor(images.shape[2:], device=sizes.device)).any()):
            raise DataError("the CTRL trigger needs images of one size; these sit on a padded canvas")
        self.check_fits(*images.shape[2:])
        s = self.spec
        return ctrl_apply(images, s.magnitude, s.window, s.frequencies, s.channels)

    def sha256(self) -> str:
        return sha256_tensor(self.patch)

    def png(self) -> bytes:
        from .triggers import png_bytes

        return png_bytes(self.patch)

    def to_dict(self) -> dict:
        return {"spec": self.spec.to_dict(), "shape": list(self.patch.shape), "dtype": "uint8",
                "raw_base64": base64.b64encode(self.patch.numpy().tobytes()).decode("ascii"), "sha256": self.sha256()}

    @classmethod
    def from_dict(cls, d: dict) -> "FrequencyTrigger":
        t = cls(CTRLSpec.from_dict(d["spec"]))
        if t.sha256() != d.get("sha256"):
            raise DataError("the CTRL trigger recorded in the manifest does not match its parameters; the manifest is corrupt")
        return t
