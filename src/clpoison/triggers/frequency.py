"""The CTRL frequency-domain trigger (Li et al., "An Embarrassingly Simple Backdoor Attack on Self-supervised
Learning", ICCV 2023; official ``meet-cjli/CTRL`` ``utils/frequency.py`` ``PoisonFre``, the ``--mode frequency``
path; ``neighbours.md`` §2), batched on the images' device.

Per image, as the official code (``color: yuv``, the default): RGB (0–255 scale, float) → YUV with
``kornia.color.rgb_to_yuv``'s coefficients (:data:`KORNIA_RGB_TO_YUV`, written out here: no kornia dependency); an
orthonormal 2-D DCT-II of every ``window`` × ``window`` block of the chosen channels (official: U and V);
``magnitude`` added to the chosen coefficients of every block (official at 32 px: (15, 15) and (31, 31)); inverse
DCT; back to RGB with ``kornia.color.yuv_to_rgb``'s coefficients (:data:`KORNIA_YUV_TO_RGB` — kornia's own rounded
inverse, so a zero-magnitude round trip moves a pixel by up to ≈ 0.35 levels, as in the official code); clamped.
Nothing is rounded before or after the DCT; the result is rounded **once**, when the poisoned uint8 image is stored
(the official code keeps float images, so its stored poisons differ from these by < 0.5 level). One ``magnitude``
is used for the poisons and for the test-time trigger, as in the official code (``args.magnitude`` for both,
``loaders/diffaugment.py``); the "50 at poison time, 100 for ASR" split is a third-party re-run's
(``SWY666/CTRL_correctness``: ``magnitude * 2`` at test), not the official code's.

``color: ycrcb`` is the OpenCV ``COLOR_RGB2YCrCb`` variant (ITU-R BT.601 with offset 128): the trigger of FTrojan
(Wang et al., ECCV 2022), which CTRL's repository keeps in ``utils/image.py`` (``poison_frequency``) but does not
use on its ``--mode frequency`` path. It is computed in float here (OpenCV rounds to uint8 between steps), and it is
the colour space of every CTRL trigger recorded before ``color`` existed (a manifest spec without ``color`` reads as
``ycrcb``).

The added coefficients can be removed again exactly before the final rounding (:func:`ctrl_remove`: the inverse of
every step, including the inverses of kornia's two matrices; tested: within 1e-5 of the input).

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
from typing import Any, Callable, Optional, Sequence, Union

import torch

from ..errors import ConfigError, DataError
from ..utils.io import sha256_tensor
from .png import png_bytes

#: ``kornia.color.rgb_to_yuv`` (kornia 0.6.5, the official requirements' pin; unchanged since): rows Y, U, V.
KORNIA_RGB_TO_YUV = ((0.299, 0.587, 0.114), (-0.147, -0.289, 0.436), (0.615, -0.515, -0.100))
#: ``kornia.color.yuv_to_rgb``: rows R, G, B over (Y, U, V); not the exact inverse of :data:`KORNIA_RGB_TO_YUV`.
KORNIA_YUV_TO_RGB = ((1.0, 0.0, 1.14), (1.0, -0.396, -0.581), (1.0, 2.029, 0.0))
COLORS = ("yuv", "ycrcb")
CHANNEL_NAMES = {"yuv": "0 (Y), 1 (U), 2 (V)", "ycrcb": "0 (Y), 1 (Cr), 2 (Cb)"}
DEFAULT_FREQUENCIES = ((15, 15), (31, 31))

# OpenCV's 8-bit RGB <-> YCrCb (ITU-R BT.601, delta 128)
_KR, _KB = 0.299, 0.114
_KG = 1 - _KR - _KB
_CR, _CB = 0.713, 0.564


def _mix(x: torch.Tensor, m: Any) -> torch.Tensor:
    """Per-pixel 3 × 3 colour matrix ``m`` applied to (N, 3, H, W)."""
    return torch.einsum("ij,njhw->nihw", torch.as_tensor(m, dtype=x.dtype, device=x.device), x)


def rgb_to_yuv(x: torch.Tensor) -> torch.Tensor:
    """``kornia.color.rgb_to_yuv`` (any scale: it is linear)."""
    return _mix(x, KORNIA_RGB_TO_YUV)


def yuv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """``kornia.color.yuv_to_rgb``."""
    return _mix(x, KORNIA_YUV_TO_RGB)


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


Convert = Callable[[torch.Tensor], torch.Tensor]


def converters(color: str, inverse: bool = False) -> tuple[Convert, Convert]:
    """(RGB → colour space, colour space → RGB) of ``color``; ``inverse=True`` gives the pair that undoes the
    forward pair's steps in reverse order (for kornia's YUV the exact inverses of its two matrices, which are not
    each other's inverse; OpenCV's YCrCb formulas are an exact pair already)."""
    if color not in COLORS:
        raise ConfigError(f"trigger.color='{color}' is unknown; choose one of: {', '.join(COLORS)}")
    if color == "ycrcb":
        return rgb_to_ycrcb, ycrcb_to_rgb
    if not inverse:
        return rgb_to_yuv, yuv_to_rgb
    to_inv = torch.linalg.inv(torch.tensor(KORNIA_YUV_TO_RGB, dtype=torch.float64))
    back_inv = torch.linalg.inv(torch.tensor(KORNIA_RGB_TO_YUV, dtype=torch.float64))
    return (lambda x: _mix(x, to_inv)), (lambda x: _mix(x, back_inv))


def dct_matrix(n: int, dtype: torch.dtype = torch.float64, device: torch.device | None = None) -> torch.Tensor:
    """The orthonormal DCT-II matrix ``D`` (``D @ x`` transforms a length-``n`` signal; ``D.T`` inverts it)."""
    k = torch.arange(n, dtype=dtype, device=device).view(-1, 1)
    i = torch.arange(n, dtype=dtype, device=device).view(1, -1)
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d


def _check(h: int, w: int, window: int, positions: Sequence[Sequence[int]], channels: Sequence[int],
           color: str = "yuv") -> None:
    if window < 1 or h % window or w % window:
        raise ConfigError(f"trigger.window={window} must divide the image size {h}x{w}")
    for p in positions:
        if len(p) != 2 or not all(0 <= int(v) < window for v in p):
            raise ConfigError(f"trigger.frequencies={list(map(list, positions))}: each must be [u, v] with 0 <= u, v < window")
    if not channels or not all(c in (0, 1, 2) for c in channels):
        raise ConfigError(f"trigger.channels={list(channels)} must name {color} channels {CHANNEL_NAMES.get(color, '0, 1, 2')}")


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


def _shift_coefficients(images: torch.Tensor, magnitude: float, window: int, positions: Sequence[Sequence[int]],
                        channels: Sequence[int], color: str, inverse: bool) -> torch.Tensor:
    n, _, h, w = images.shape
    _check(h, w, window, positions, channels, color)
    to, back = converters(color, inverse)
    x = to(images.to(torch.float64))
    d = dct_matrix(window, torch.float64, images.device)
    ch = list(channels)
    coef = _blockwise(x[:, ch], d, inverse=False)
    coef = coef + _blocks_shift((h, w), window, positions, magnitude, coef.dtype, coef.device)
    x = x.clone()
    x[:, ch] = _blockwise(coef, d, inverse=True)
    return back(x)


def ctrl_float(images: torch.Tensor, magnitude: float, window: int = 32,
               positions: Sequence[Sequence[int]] = DEFAULT_FREQUENCIES, channels: Sequence[int] = (1, 2),
               color: str = "yuv") -> torch.Tensor:
    """The triggered images in float64 (0–255 scale, neither rounded nor clamped): colour space, block DCT,
    ``magnitude`` added at ``positions`` of ``channels``, inverse DCT, back to RGB."""
    return _shift_coefficients(images, magnitude, window, positions, channels, color, inverse=False)


def ctrl_remove(images: torch.Tensor, magnitude: float, window: int = 32,
                positions: Sequence[Sequence[int]] = DEFAULT_FREQUENCIES, channels: Sequence[int] = (1, 2),
                color: str = "yuv") -> torch.Tensor:
    """The inverse of :func:`ctrl_float` (every step undone in reverse order): ``ctrl_remove(ctrl_float(x)) == x``
    up to float64 rounding."""
    return _shift_coefficients(images, -magnitude, window, positions, channels, color, inverse=True)


def ctrl_apply(images: torch.Tensor, magnitude: float, window: int = 32,
               positions: Sequence[Sequence[int]] = DEFAULT_FREQUENCIES, channels: Sequence[int] = (1, 2),
               chunk: int = 4096, color: str = "yuv") -> torch.Tensor:
    """uint8 images with the CTRL trigger (a new tensor; the input is not modified), ``chunk`` images at a time:
    :func:`ctrl_float`, then clamped and rounded once."""
    if images.dtype != torch.uint8:
        raise ConfigError("the CTRL trigger applies to uint8 images")
    out = torch.empty_like(images)
    for s in range(0, len(images), chunk):
        y = ctrl_float(images[s:s + chunk], magnitude, window, positions, channels, color)
        out[s:s + chunk] = y.clamp(0, 255).round().to(torch.uint8)
    return out


def mismatched_frequencies(window: int, positions: Sequence[Sequence[int]]) -> Optional[tuple[tuple[int, int], ...]]:
    """As many other (u, v) positions as ``positions``, none of them a trigger position, DC or a repeat: each
    (u, v) → (u, v + window/2 mod window) (the official (15, 15), (31, 31) → (15, 31), (31, 15)), else the next
    free position in row-major order. The DCT is orthonormal, so the same magnitude at as many distinct positions
    adds a perturbation of the same L2 energy. None when the window has too few positions."""
    used = {tuple(int(v) for v in p) for p in positions}
    free = [(u, v) for u in range(window) for v in range(window) if (u, v) != (0, 0) and (u, v) not in used]
    out: list[tuple[int, int]] = []
    for u, v in (tuple(int(c) for c in p) for p in positions):
        want = (u, (v + window // 2) % window)
        pick = want if want in free else (free[0] if free else None)
        if pick is None:
            return None
        free.remove(pick)
        out.append(pick)
    return tuple(out)


@dataclass
class CTRLSpec:
    """The CTRL trigger's parameters (official defaults at 32 px; every field is recorded in the manifest)."""

    magnitude: float = 100.0  # added to each chosen coefficient (0–255 scale)
    window: int = 32  # DCT block size; must divide the image size
    frequencies: Sequence[Sequence[int]] = DEFAULT_FREQUENCIES  # (u, v) within a block
    channels: Sequence[int] = (1, 2)  # colour-space channels: 0 Y, 1 U (Cr), 2 V (Cb)
    color: str = "yuv"  # yuv: kornia's matrices (the official code); ycrcb: OpenCV's (FTrojan, CTRL utils/image.py)

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
        if self.color not in COLORS:
            raise ConfigError(f"trigger.color='{self.color}' is unknown; choose yuv (kornia, the official CTRL code) "
                              "or ycrcb (OpenCV, FTrojan)")
        _check(self.window, self.window, self.window, self.frequencies, self.channels, self.color)

    def to_dict(self) -> dict:
        return {"type": "ctrl", "magnitude": self.magnitude, "window": self.window,
                "frequencies": [list(p) for p in self.frequencies], "channels": list(self.channels), "color": self.color}

    @classmethod
    def from_dict(cls, d: Optional[dict], where: str = "trigger") -> "CTRLSpec":
        d = {k: v for k, v in dict(d or {}).items() if k != "type"}
        names = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown key(s) {unknown} in {where} (type ctrl); valid keys: type, {', '.join(sorted(names))}")
        return cls(**d)


class FrequencyTrigger:
    """The CTRL trigger behind the same interface as the patch :class:`~clpoison.triggers.patch.Trigger`: ``apply`` (seed and
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
        return ctrl_apply(images, s.magnitude, s.window, s.frequencies, s.channels, color=s.color)

    def mismatched(self) -> Optional["FrequencyTrigger"]:
        """The test-time control: the same magnitude, channels and colour space at as many other frequencies
        (:func:`mismatched_frequencies`), so the same L2 energy before rounding; None if the window has no room."""
        s = self.spec
        other = mismatched_frequencies(s.window, s.frequencies)
        if other is None:
            return None
        return FrequencyTrigger(CTRLSpec(s.magnitude, s.window, other, s.channels, s.color))

    def sha256(self) -> str:
        return sha256_tensor(self.patch)

    def png(self) -> bytes:
        return png_bytes(self.patch)

    def to_dict(self) -> dict:
        return {"spec": self.spec.to_dict(), "shape": list(self.patch.shape), "dtype": "uint8",
                "raw_base64": base64.b64encode(self.patch.numpy().tobytes()).decode("ascii"), "sha256": self.sha256()}

    @classmethod
    def from_dict(cls, d: dict) -> "FrequencyTrigger":
        spec = {"color": "ycrcb", **d["spec"]}  # recorded before `color` existed: OpenCV's YCrCb was the only one
        t = cls(CTRLSpec.from_dict(spec))
        if t.sha256() != d.get("sha256"):
            raise DataError("the CTRL trigger recorded in the manifest does not match its parameters; the manifest is corrupt")
        return t
