"""JPEG re-compression — the JPEG half of Image Shortcut Squeezing (ISS: Liu, Zhao, Larson, "Image Shortcut Squeezing:
Countering Perturbative Availability Poisons with Compression", ICML 2023, arXiv 2301.13838; official code
``liuzrcc/ImageShortcutSqueezing`` ``augmentations.py::aug_train``; dossier ``neighbours.md`` §3).

Availability poisons such as Contrastive Poisoning (He, Zha, Katabi, ICLR 2023) are small, mostly high-frequency
perturbations; strong JPEG compression throws those frequencies away. ISS reports that JPEG at quality 10 restores
CIFAR-10 accuracy to about 80-85 % against most of 12 poisons (README table, "JPEG-10"), at a cost of about 9 points
of clean accuracy (85.38 vs 94.68).

Every training image is encoded in memory with Pillow at ``quality`` and decoded back, as ISS does
(``image.save(BytesIO(), "JPEG", quality=q)``, Pillow's default 4:2:0 chroma subsampling); labels, class names and
canvas sizes are unchanged. It is deterministic (no randomness).

Default: ``quality`` 10 — ISS's ``--jpeg 10`` (README and table "JPEG-10"). ``neighbours.md`` §3 names ISS's
JPEG compression but not its quality; 10 comes from the ISS repository.

Deviations: ISS applies the compression inside the training transform on every load; since it is deterministic and
comes before the random augmentations, compressing once up front gives the same training images. Images on a
padded canvas (``sizes``) are compressed on their valid area only; the padding is copied unchanged.

Example::

    >>> import torch
    >>> from clpoison.data.datasets import ImageDataset
    >>> imgs = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    >>> ds = ImageDataset(imgs, torch.tensor([0, 1]), ["cat", "dog"])
    >>> out, info = Jpeg(JpegParams(quality=10)).filter(ds, FilterContext())
    >>> out.images.shape, out.images.dtype, info["quality"], info["mean_abs_change"] > 10
    (torch.Size([2, 3, 16, 16]), torch.uint8, 10, True)

From the command line (any image preset)::

    clpoison run simclr-small.yaml defense.name=jpeg defense.params.quality=10 --out runs/jpeg10
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ...contexts import FilterContext
from ..base import DEFENSES, Defense, DefenseParams
from .purify import check_number, map_images


@dataclass
class JpegParams(DefenseParams):
    quality: int = 10  # Pillow JPEG quality 1..100 (ISS --jpeg 10; Pillow advises <= 95, 100 is near-lossless)
    batch_size: int = 1024  # images per chunk (bounds the temporary copies)

    def __post_init__(self) -> None:
        check_number("quality", self.quality, 1, 100, integer=True, hint="ISS uses 10")
        check_number("batch_size", self.batch_size, 1, integer=True)


def jpeg_roundtrip(images: torch.Tensor, quality: int) -> torch.Tensor:
    """uint8 (B,3,h,w) → each image JPEG-encoded at ``quality`` with Pillow and decoded, uint8 (B,3,h,w)."""
    from PIL import Image

    arr = images.permute(0, 2, 3, 1).contiguous().numpy()
    out = np.empty_like(arr)
    for i in range(len(arr)):
        buf = io.BytesIO()
        Image.fromarray(arr[i]).save(buf, format="JPEG", quality=int(quality))
        buf.seek(0)
        with Image.open(buf) as im:
            out[i] = np.asarray(im.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


@DEFENSES.register("jpeg")
class Jpeg(Defense):
    """JPEG re-compression of every training image (ISS-J; a data-level defense)."""

    name = "jpeg"
    modality = "image"
    Params = JpegParams

    def filter(self, train: Any, context: FilterContext) -> tuple[Any, dict[str, Any]]:
        q = int(self.params.quality)
        out, stats = map_images(train, lambda x, idx: jpeg_roundtrip(x, q), self.params.batch_size, "defense jpeg")
        return out, {"quality": q, **stats}
