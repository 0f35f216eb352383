"""Grayscale purification — the grayscale half of Image Shortcut Squeezing (ISS: Liu, Zhao, Larson, "Image Shortcut
Squeezing: Countering Perturbative Availability Poisons with Compression", ICML 2023, arXiv 2301.13838; official code
``liuzrcc/ImageShortcutSqueezing`` ``augmentations.py::aug_train``; dossier ``neighbours.md`` §3).

Colour-based (low-frequency, per-channel) availability poisons lose most of their signal when the colour channels are
merged. ISS reports that grayscale training restores CIFAR-10 accuracy to ~93 % against EM, REM and Deep Confuse
(README table), at ~2 points of clean accuracy (92.41 vs 94.68).

Every training image is replaced by its ITU-R BT.601 luma L = 0.299 R + 0.587 G + 0.114 B, replicated to three
channels, uint8. ISS uses torchvision ``transforms.Grayscale(3)`` on PIL images, i.e. Pillow's ``convert("L")``;
the luma here is computed with Pillow's fixed-point form of the same weights,
``(19595 R + 38470 G + 7471 B + 2^15) >> 16``, so it is bit-identical to ISS's images. Labels, class names and
canvas sizes are unchanged; zero padding stays zero. No parameters beyond ``batch_size``; deterministic.

Deviation: ISS converts inside the training transform on every load; since it is deterministic and comes before the
random augmentations, converting once up front gives the same training images.

Example::

    >>> import torch
    >>> from clpoison.data.datasets import ImageDataset
    >>> imgs = torch.tensor([255, 0, 0], dtype=torch.uint8).view(1, 3, 1, 1).expand(1, 3, 2, 2).contiguous()
    >>> out, info = Grayscale(GrayscaleParams()).filter(ImageDataset(imgs, torch.tensor([0]), ["red"]), FilterContext())
    >>> out.images[0, :, 0, 0].tolist()  # 0.299 * 255 = 76.2
    [76, 76, 76]

From the command line (any image preset)::

    clpoison run simclr-small.yaml defense.name=grayscale --out runs/gray
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ...contexts import FilterContext
from ..base import DEFENSES, Defense, DefenseParams
from .purify import check_number, map_images

#: ITU-R BT.601 luma weights (R, G, B), and Pillow's 16-bit fixed-point version of them (sum 65536).
LUMA_601 = (0.299, 0.587, 0.114)
LUMA_601_FIXED = (19595, 38470, 7471)


@dataclass
class GrayscaleParams(DefenseParams):
    batch_size: int = 4096  # images per chunk (bounds the temporary copies)

    def __post_init__(self) -> None:
        check_number("batch_size", self.batch_size, 1, integer=True)


def to_grayscale(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B,3,h,w) → BT.601 luma replicated to 3 channels, uint8 (B,3,h,w) (Pillow ``convert("L")`` exactly)."""
    x = images.to(torch.int32)
    r, g, b = LUMA_601_FIXED
    y = (x[:, 0] * r + x[:, 1] * g + x[:, 2] * b + (1 << 15)) >> 16
    return y.to(torch.uint8).unsqueeze(1).expand(-1, 3, -1, -1).contiguous()


@DEFENSES.register("grayscale")
class Grayscale(Defense):
    """Replace every training image by its luma (ISS-G; a data-level defense)."""

    name = "grayscale"
    modality = "image"
    Params = GrayscaleParams

    def filter(self, train: Any, context: FilterContext) -> tuple[Any, dict[str, Any]]:
        out, stats = map_images(train, lambda x, idx: to_grayscale(x), self.params.batch_size, "defense grayscale")
        return out, {"weights": list(LUMA_601), **stats}
