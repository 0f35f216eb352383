"""Backdoor triggers: fixed, seeded patch patterns pasted into uint8 images, batched on the images' device.

Used by every backdoor attack (Carlini & Terzis 2022, arXiv 2106.09667 §1.5 of the dossier; CorruptEncoder,
arXiv 2211.08229; NLB, arXiv 2404.06694). One :class:`Trigger` object holds one exact patch tensor; the attack
pastes it at poison time and the ASR evaluation pastes the *same* tensor at test time (Carlini used a fixed patch;
CleanCLIP's ``random`` patch, redrawn per image, is available only through ``per_image=True``).

Patterns (``pattern``): ``checkerboard`` (black/white, ``trig[:, ::2, ::2]`` style), ``uniform`` (U[0,255] noise),
``gaussian`` (N(127.5, 64²) clamped), ``solid`` (``color``), ``png`` (a user image at ``path``, resized to ``size``),
``nlb`` (No-Label Backdoors' ``checkerboard_center``: the 3 × 3 values [[0,0,255],[0,255,0],[255,0,255]], identical
in R, G and B — official ``poisoning_utils.py``; a larger ``size`` scales it up by nearest neighbour).
A *blended full-image* trigger is a noise pattern as large as the image with an opacity, e.g.
``{pattern: gaussian, size: 32, location: top-left, opacity: 0.2}`` (NLB's parser default ``gaussian_noise``, α 0.2).
The frequency-domain CTRL trigger is ``{type: ctrl, ...}`` (:mod:`clpoison.triggers.frequency`);
:func:`clpoison.triggers.build_trigger` and :func:`clpoison.triggers.trigger_from_dict` pick the class from ``type``
(``patch``, the default, or ``ctrl``).

Locations (``location``): ``random`` (top-left corner uniform over the valid area), ``fixed`` (``xy`` = (x, y)),
``top-left`` / ``top-right`` / ``bottom-left`` / ``bottom-right``, ``center`` (``((H − s) // 2, (W − s) // 2)``:
NLB's pixels 14..16 for a 3-px trigger at 32 px), ``four-corners`` (the patch in all four corners,
as CleanCLIP's ``four_corners``), ``center-range`` (top-left corner uniform in
[lo·S, hi·S − size] per axis, ``center_range`` = (lo, hi); CorruptEncoder's evaluation uses (0.25, 0.75)).
``opacity`` blends: ``out = (1 − a)·image + a·patch`` inside the patch (1 = hard paste).

Example::

    >>> import torch
    >>> t = Trigger(TriggerSpec(pattern="checkerboard", size=4, location="fixed", xy=(1, 2)))
    >>> x = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    >>> y = t.apply(x, seed=0)
    >>> bool((y[:, :, 2:6, 1:5] == t.patch).all()), int(x.sum())
    (True, 0)
"""

from __future__ import annotations

import base64
from dataclasses import asdict, dataclass
from typing import Optional, Sequence, Union

import torch

from ..errors import ConfigError, DataError
from ..utils.io import sha256_tensor
from .png import png_bytes, read_png

PATTERNS = ("checkerboard", "uniform", "gaussian", "solid", "png", "nlb")
LOCATIONS = ("random", "fixed", "top-left", "top-right", "bottom-left", "bottom-right", "center", "four-corners",
             "center-range")
#: NLB's ``checkerboard_center`` values (official ``poisoning_utils.py``), the same in R, G and B.
NLB_PATTERN = ((0, 0, 255), (0, 255, 0), (255, 0, 255))


@dataclass
class TriggerSpec:
    """What a trigger is; every field is recorded in the manifest. Defaults: Carlini/HanxunH 16x16 checkerboard."""

    pattern: str = "checkerboard"
    size: int = 16
    location: str = "random"
    xy: Optional[Sequence[int]] = None  # (x, y) top-left corner for location=fixed
    center_range: Sequence[float] = (0.25, 0.75)
    opacity: float = 1.0
    color: Sequence[int] = (255, 255, 0)  # solid colour (CleanCLIP "yellow")
    path: Optional[str] = None  # PNG for pattern=png
    seed: int = 0  # seeds the noise patterns (one fixed patch per seed)
    per_image: bool = False  # redraw the noise patch for every image (CleanCLIP's `random`); not the default

    def __post_init__(self) -> None:
        if self.pattern not in PATTERNS:
            raise ConfigError(f"trigger.pattern='{self.pattern}' is unknown; choose one of: {', '.join(PATTERNS)}")
        if self.location not in LOCATIONS:
            raise ConfigError(f"trigger.location='{self.location}' is unknown; choose one of: {', '.join(LOCATIONS)}")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise ConfigError(f"trigger.size={self.size!r} must be a positive integer (pixels)")
        if not 0.0 < float(self.opacity) <= 1.0:
            raise ConfigError(f"trigger.opacity={self.opacity} must be in (0, 1]")
        if self.location == "fixed":
            if self.xy is None or len(self.xy) != 2:
                raise ConfigError("trigger.location=fixed needs trigger.xy=[x, y] (top-left corner in pixels)")
            self.xy = tuple(int(v) for v in self.xy)
        lo, hi = (float(v) for v in self.center_range)
        if not 0.0 <= lo < hi <= 1.0:
            raise ConfigError(f"trigger.center_range={list(self.center_range)} must satisfy 0 <= lo < hi <= 1")
        self.center_range = (lo, hi)
        if len(self.color) != 3 or not all(0 <= int(c) <= 255 for c in self.color):
            raise ConfigError(f"trigger.color={list(self.color)} must be three integers in [0, 255]")
        self.color = tuple(int(c) for c in self.color)
        if self.pattern == "png" and not self.path:
            raise ConfigError("trigger.pattern=png needs trigger.path=FILE.png")
        if self.per_image and self.pattern not in ("uniform", "gaussian"):
            raise ConfigError("trigger.per_image=true only applies to the noise patterns (uniform, gaussian)")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["xy"] = None if self.xy is None else list(self.xy)
        d["center_range"] = list(self.center_range)
        d["color"] = list(self.color)
        return d

    @classmethod
    def from_dict(cls, d: Optional[dict], where: str = "trigger") -> "TriggerSpec":
        d = dict(d or {})
        names = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown key(s) {unknown} in {where}; valid keys: {', '.join(sorted(names))}")
        from ..utils.schema import from_dict  # typed: a bad value names its key (e.g. trigger.opacity='abc')

        return from_dict(cls, d, f"{where}.")


def _draw(pattern: str, size: int, color: Sequence[int], g: torch.Generator, n: int = 1) -> torch.Tensor:
    """n patches (n,3,size,size) uint8."""
    if pattern == "checkerboard":
        yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        p = (((yy + xx) % 2) * 255).to(torch.uint8).expand(3, size, size)
    elif pattern == "nlb":
        k = torch.arange(size) * len(NLB_PATTERN) // size  # nearest-neighbour scaling of the 3 x 3 values
        p = torch.tensor(NLB_PATTERN, dtype=torch.uint8)[k][:, k].expand(3, size, size)
    elif pattern == "uniform":
        return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.int64).to(torch.uint8)
    elif pattern == "gaussian":
        x = 127.5 + 64.0 * torch.randn(n, 3, size, size, generator=g)
        return x.round().clamp(0, 255).to(torch.uint8)
    elif pattern == "solid":
        p = torch.tensor(color, dtype=torch.uint8).view(3, 1, 1).expand(3, size, size)
    else:  # pragma: no cover - validated earlier
        raise ConfigError(f"unknown trigger pattern {pattern}")
    return p.unsqueeze(0).expand(n, 3, size, size).contiguous()


class Trigger:
    """One fixed patch (``self.patch``, uint8 (3,s,s)) and where/how to paste it."""

    def __init__(self, spec: Union[TriggerSpec, dict, None] = None, patch: Optional[torch.Tensor] = None) -> None:
        self.spec = spec if isinstance(spec, TriggerSpec) else TriggerSpec.from_dict(spec)
        if patch is None:
            if self.spec.pattern == "png":
                patch = read_png(self.spec.path, self.spec.size)
            else:
                g = torch.Generator().manual_seed(int(self.spec.seed))
                patch = _draw(self.spec.pattern, self.spec.size, self.spec.color, g)[0]
        patch = torch.as_tensor(patch)
        if patch.dtype != torch.uint8 or patch.shape != (3, self.spec.size, self.spec.size):
            raise DataError(f"trigger patch must be uint8 (3,{self.spec.size},{self.spec.size}), got {tuple(patch.shape)} {patch.dtype}")
        self.patch = patch.contiguous()

    @property
    def size(self) -> int:
        return self.spec.size

    kind = "patch"

    def sha256(self) -> str:
        return sha256_tensor(self.patch)

    def png(self) -> bytes:
        return png_bytes(self.patch)

    def to_dict(self) -> dict:
        """Manifest entry: the spec, the exact tensor (base64 of its raw bytes) and its sha256."""
        return {
            "spec": self.spec.to_dict(),
            "shape": list(self.patch.shape),
            "dtype": "uint8",
            "raw_base64": base64.b64encode(self.patch.numpy().tobytes()).decode("ascii"),
            "sha256": self.sha256(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Trigger":
        """Rebuild from :meth:`to_dict` (the exact tensor; a PNG path need not exist any more)."""
        raw = base64.b64decode(d["raw_base64"])
        patch = torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(*d["shape"]).clone()
        spec = TriggerSpec.from_dict(d["spec"])
        t = cls.__new__(cls)
        t.spec, t.patch = spec, patch
        if t.sha256() != d["sha256"]:
            raise DataError("trigger tensor in the manifest does not match its sha256; the manifest is corrupt")
        return t

    def mismatched(self) -> Optional["Trigger"]:
        """The test-time control: another patch of the same L2 energy about mid-grey, ``‖p − 127.5‖₂`` — this
        patch's pixels in another (seeded) order, each value inverted (v → 255 − v) — at the same size, places and
        opacity. None for ``per_image`` patches (there is no one patch to rearrange)."""
        if self.spec.per_image:
            return None
        s = self.spec.size
        flat = self.patch.reshape(3, s * s)
        for k in range(1, 11):  # a different order until the result differs (tiny symmetric patches)
            perm = torch.randperm(s * s, generator=torch.Generator().manual_seed(int(self.spec.seed) + k))
            other = (255 - flat[:, perm]).reshape(3, s, s)
            if not torch.equal(other, self.patch):
                break
        return Trigger(self.spec, patch=other)

    # ----------------------------------------------------------------------------------------------------------

    def check_fits(self, height: int, width: int) -> None:
        s = self.spec.size
        if s > height or s > width:
            raise ConfigError(f"trigger size {s}x{s} is larger than the {height}x{width} images; use trigger.size <= {min(height, width)}")
        if self.spec.location == "fixed":
            x, y = self.spec.xy
            if not (0 <= x <= width - s and 0 <= y <= height - s):
                raise ConfigError(f"trigger.xy={[x, y]} puts the {s}x{s} patch outside the {height}x{width} images; "
                                  f"use 0 <= x <= {width - s}, 0 <= y <= {height - s}")
        if self.spec.location == "center-range":
            lo, hi = self.spec.center_range
            if int(hi * min(height, width)) - s < int(lo * min(height, width)):
                raise ConfigError(f"trigger.center_range={list(self.spec.center_range)} leaves no room for a {s}px patch "
                                  f"in {height}x{width} images; widen the range or shrink the trigger")

    def positions(self, n: int, height: int, width: int, g: torch.Generator,
                  sizes: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Top-left corners (n, k, 2) as (y, x); k = 4 for four-corners, else 1. ``sizes`` (n,2) = valid (h,w)."""
        s = self.spec.size
        hs = torch.full((n,), height, dtype=torch.int64) if sizes is None else sizes[:, 0].cpu().long()
        ws = torch.full((n,), width, dtype=torch.int64) if sizes is None else sizes[:, 1].cpu().long()
        if bool((hs < s).any() or (ws < s).any()):
            raise ConfigError(f"trigger size {s}x{s} is larger than some images; use a smaller trigger.size")
        loc = self.spec.location
        u = torch.rand(n, 2, generator=g, dtype=torch.float64)
        if loc == "random":
            ys = (u[:, 0] * (hs - s + 1)).floor().long()
            xs = (u[:, 1] * (ws - s + 1)).floor().long()
        elif loc == "center-range":
            lo, hi = self.spec.center_range
            y0, x0 = (lo * hs).long(), (lo * ws).long()
            y1, x1 = (hi * hs).long() - s, (hi * ws).long() - s
            ys = y0 + (u[:, 0] * (y1 - y0 + 1)).floor().long()
            xs = x0 + (u[:, 1] * (x1 - x0 + 1)).floor().long()
        elif loc == "fixed":
            ys = torch.full((n,), self.spec.xy[1], dtype=torch.int64)
            xs = torch.full((n,), self.spec.xy[0], dtype=torch.int64)
        elif loc == "center":
            ys, xs = (hs - s) // 2, (ws - s) // 2
        else:
            top, left = torch.zeros(n, dtype=torch.int64), torch.zeros(n, dtype=torch.int64)
            bottom, right = hs - s, ws - s
            corners = {"top-left": (top, left), "top-right": (top, right), "bottom-left": (bottom, left),
                       "bottom-right": (bottom, right)}
            if loc == "four-corners":
                return torch.stack([torch.stack(c, 1) for c in corners.values()], 1)
            ys, xs = corners[loc]
        return torch.stack([ys, xs], 1).unsqueeze(1)

    def apply(self, images: torch.Tensor, seed: Union[int, torch.Generator] = 0,
              sizes: Optional[torch.Tensor] = None) -> torch.Tensor:
        """A triggered copy of uint8 images (N,3,H,W) (the input is not modified), on the images' device.

        ``seed`` (or a CPU generator) draws the random locations (and per-image patches); the same seed gives the
        same placements, so evaluation is reproducible.
        """
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise DataError(f"trigger.apply needs uint8 (N,3,H,W) images, got {tuple(images.shape)} {images.dtype}")
        n, _, h, w = images.shape
        self.check_fits(h, w)
        g = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(int(seed))
        out = images.clone()
        if n == 0:
            return out
        pos = self.positions(n, h, w, g, sizes).to(images.device)  # (n,k,2)
        s = self.spec.size
        if self.spec.per_image:
            patch = _draw(self.spec.pattern, s, self.spec.color, g, n)  # (n,3,s,s)
        else:
            patch = self.patch.unsqueeze(0).expand(n, 3, s, s)
        patch = patch.to(images.device).permute(0, 2, 3, 1).float()  # (n,s,s,3)
        ar = torch.arange(s, device=images.device)
        idx_n = torch.arange(n, device=images.device).view(n, 1, 1)
        a = float(self.spec.opacity)
        for k in range(pos.shape[1]):
            rows = (pos[:, k, 0].view(n, 1) + ar).view(n, s, 1)
            cols = (pos[:, k, 1].view(n, 1) + ar).view(n, 1, s)
            region = out[idx_n, :, rows, cols]  # (n,s,s,3): advanced indices first, then the channel slice
            blended = patch if a >= 1.0 else (1.0 - a) * region.float() + a * patch
            out[idx_n, :, rows, cols] = blended.round().clamp(0, 255).to(torch.uint8)
        return out

    def mask(self, images: torch.Tensor, seed: Union[int, torch.Generator] = 0,
             sizes: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Bool (N,H,W): where :meth:`apply` with the same seed puts the patch (for tests and diagnostics)."""
        n, _, h, w = images.shape
        g = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(int(seed))
        pos = self.positions(n, h, w, g, sizes)
        m = torch.zeros(n, h, w, dtype=torch.bool)
        s = self.spec.size
        for i in range(n):
            for y, x in pos[i].tolist():
                m[i, y:y + s, x:x + s] = True
        return m
