"""Reference objects for CorruptEncoder (Zhang, Liu, Jia, Gong, CVPR 2024, arXiv 2211.08229; dossier
``algorithms.md`` §2.4): a tight cut-out of a target-class object with its alpha mask.

Reads reference images and ``label.png`` masks, derives masks for data without them (colour distance to the
image border thresholded with Otsu's method, or a centre box) and cuts the object to the bounding box of the
mask's largest connected region.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ...data.image_readers import decode_image
from ...errors import DataError


def largest_region_bbox(mask: np.ndarray) -> Optional[tuple[int, int, int, int]]:
    """(y0, y1, x0, x1) (exclusive ends) of the largest 8-connected region of a bool mask, or None if empty."""
    from scipy import ndimage

    lab, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return None
    counts = np.bincount(lab.ravel())[1:]
    k = int(counts.argmax()) + 1
    ys, xs = np.nonzero(lab == k)
    return int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1


def center_mask(h: int, w: int, fraction: float) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    ch, cw = max(1, round(h * fraction)), max(1, round(w * fraction))
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    m[y0 : y0 + ch, x0 : x0 + cw] = True
    return m


def otsu_threshold(v: np.ndarray) -> float:
    """Otsu's threshold of a 1-D array of values."""
    hist, edges = np.histogram(v, bins=64)
    mids = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    s0 = np.cumsum(hist * mids)
    m0 = s0 / np.maximum(w0, 1)
    m1 = (s0[-1] - s0) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    return float(mids[int(between.argmax())])


def color_distance_mask(img: torch.Tensor, min_cover: float = 0.1, fraction: float = 0.75) -> tuple[np.ndarray, str]:
    """Saliency mask of a (3,h,w) image: colour distance to the mean of its 2-px border, Otsu threshold.

    Returns the mask and how it was obtained (``color-distance`` or the ``center`` fallback when the region
    covers less than ``min_cover`` of the image).
    """
    x = img.float().numpy()
    _, h, w = x.shape
    b = max(1, min(2, h // 4, w // 4))
    border = np.concatenate([x[:, :b].reshape(3, -1), x[:, -b:].reshape(3, -1),
                             x[:, :, :b].reshape(3, -1), x[:, :, -b:].reshape(3, -1)], axis=1)
    d = np.sqrt(((x - border.mean(1)[:, None, None]) ** 2).sum(0))
    m = d > otsu_threshold(d.ravel()) if d.max() > d.min() else np.zeros((h, w), dtype=bool)
    box = largest_region_bbox(m)
    if box is None or (box[1] - box[0]) * (box[3] - box[2]) < min_cover * h * w:
        return center_mask(h, w, fraction), "center"
    return m, "color-distance"


@dataclass
class RefObject:
    """A cut-out: image (3,h,w) uint8 and alpha (h,w) float in [0,1], with where it came from."""

    image: torch.Tensor
    alpha: torch.Tensor
    source: str
    mask: str


def cut_object(img: torch.Tensor, mask: np.ndarray, source: str, how: str) -> RefObject:
    """Crop the image and mask to the bounding box of the mask's largest connected region."""
    box = largest_region_bbox(mask)
    if box is None:
        raise DataError(f"reference '{source}': the mask has no object pixels; fix label.png (object = non-zero)")
    y0, y1, x0, x1 = box
    alpha = torch.from_numpy(mask[y0:y1, x0:x1].astype(np.float32))
    return RefObject(img[:, y0:y1, x0:x1].contiguous(), alpha, source, how)


def read_image(path: Path) -> torch.Tensor:
    """An image file as uint8 (3,h,w) at its native size."""
    return decode_image(path, None)


def read_mask(path: Path) -> np.ndarray:
    from ...data.image_readers import open_image

    with open_image(path, "mask", "give a PNG with object = non-zero") as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    return arr.any(axis=2)
