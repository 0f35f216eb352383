"""Shared plumbing of the purification defenses (``matrix-completion``, ``jpeg``, ``grayscale``).

A purification defense rewrites every training image and keeps labels, class names and canvas sizes.
:func:`map_images` does the bookkeeping once for all of them:

* it refuses anything but a resident :class:`~clpoison.data.datasets.ImageDataset`, with a one-line
  :class:`~clpoison.errors.ConfigError` (a streaming image folder or a caption dataset has no image tensor to rewrite);
* it hands the function uint8 (B, 3, h, w) chunks of at most ``batch_size`` images that all share one valid size, so
  images on a padded canvas (``sizes``) are processed on their valid area only, and the zero padding is copied as it is;
* it never modifies the input tensor: the function gets a copy, and the result goes into a new tensor;
* it reports the mean absolute change in pixel levels (0-255) over the valid pixels, and the seconds spent.

Example::

    >>> import torch
    >>> from clpoison.data.datasets import ImageDataset
    >>> ds = ImageDataset(torch.full((2, 3, 4, 4), 10, dtype=torch.uint8), torch.tensor([0, 1]), ["a", "b"])
    >>> out, stats = map_images(ds, lambda x, idx: x + 1, batch_size=1, what="defense plus-one")
    >>> int(out.images.max()), int(ds.images.max()), stats["mean_abs_change"]
    (11, 10, 1.0)
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional

import torch

from ...contexts import FilterContext
from ...data.datasets import ImageDataset
from ...errors import ConfigError

#: ``fn(images, index) -> images``: uint8 (B,3,h,w) and the (B,) int64 positions of those images in the split.
ChunkFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def require_image_dataset(train: Any, what: str) -> ImageDataset:
    """``train`` if it is a resident ImageDataset, else a ConfigError naming ``what`` and the fix."""
    if isinstance(train, ImageDataset):
        return train
    kind = type(train).__name__
    hint = ("lower data.image_size or raise data.max_resident_gb so the split is held in memory"
            if kind == "StreamingImageFolder" else "use an image dataset (not captions)")
    raise ConfigError(f"{what} purifies a resident image split, got {kind}; {hint}")


def size_groups(ds: ImageDataset) -> list[tuple[int, int, torch.Tensor]]:
    """``[(h, w, index), ...]``: the images grouped by valid size (one group when there is no ``sizes``)."""
    n, _, hc, wc = ds.images.shape
    if ds.sizes is None:
        return [(int(hc), int(wc), torch.arange(n))] if n else []
    sizes = ds.sizes
    uniq = torch.unique(sizes, dim=0)
    groups = []
    for hw in uniq.tolist():
        idx = torch.nonzero((sizes[:, 0] == hw[0]) & (sizes[:, 1] == hw[1])).flatten()
        groups.append((int(hw[0]), int(hw[1]), idx))
    return groups


def map_images(ds: Any, fn: ChunkFn, batch_size: int, what: str) -> tuple[ImageDataset, dict[str, Any]]:
    """A new ImageDataset whose images are ``fn`` applied chunk by chunk (valid area only; see the module doc).

    Returns ``(dataset, stats)`` with ``stats = {"images", "seconds", "mean_abs_change"}``.
    """
    ds = require_image_dataset(ds, what)
    t0 = time.perf_counter()
    out = ds.images.clone()
    total_change, total_px = 0.0, 0
    for h, w, idx in size_groups(ds):
        for s in range(0, len(idx), batch_size):
            sub = idx[s : s + batch_size]
            x = ds.images[sub, :, :h, :w].contiguous()  # advanced indexing: a copy, the input stays untouched
            y = fn(x.clone(), sub)
            if y.dtype != torch.uint8 or tuple(y.shape) != tuple(x.shape):
                raise RuntimeError(f"{what}: chunk function returned {y.dtype} {tuple(y.shape)} for "
                                   f"uint8 {tuple(x.shape)}")
            out[sub, :, :h, :w] = y
            total_change += float((y.to(torch.int32) - x.to(torch.int32)).abs().sum(dtype=torch.float64))
            total_px += x.numel()
    result = ImageDataset(out, ds.labels.clone(), list(ds.class_names), ds.name,
                          None if ds.sizes is None else ds.sizes.clone())
    stats = {
        "images": len(ds),
        "seconds": round(time.perf_counter() - t0, 3),
        "mean_abs_change": round(total_change / max(total_px, 1), 4),
    }
    return result, stats


# --------------------------------------------------------------------------------------------------------------
# parameter checks shared by the purification defenses (messages name ``defense.params.KEY``)


def check_number(key: str, value: Any, lo: Optional[float] = None, hi: Optional[float] = None,
                 lo_open: bool = False, integer: bool = False, hint: str = "") -> None:
    """ConfigError unless ``value`` is a number (an integer if ``integer``) in [lo, hi], or (lo, hi] if ``lo_open``."""
    bad_type = isinstance(value, bool) or not isinstance(value, int if integer else (int, float))
    low = "(" if lo_open else "["
    rng = f"in {low}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"
    if bad_type or (lo is not None and (value <= lo if lo_open else value < lo)) or (hi is not None and value > hi):
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"defense.params.{key}={value!r} must be {kind} {rng}{'; ' + hint if hint else ''}")


def check_choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"defense.params.{key}={value!r} unknown; choose one of {', '.join(choices)}")


def check_device(key: str, value: Any) -> None:
    ok = isinstance(value, str) and (value in ("auto", "cpu", "cuda") or (value.startswith("cuda:")
                                                                          and value[5:].isdigit()))
    if not ok:
        raise ConfigError(f"defense.params.{key}={value!r} must be auto, cpu, cuda or cuda:N")


def resolve_device(name: str, context: FilterContext, what: str) -> torch.device:
    """``auto`` → the run's device if the context names one, else CUDA when available, else the CPU."""
    if name == "auto":
        dev = context.device
        if dev is not None:
            return torch.device(dev)
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"{what}: defense.params.device={name} but CUDA is not available; use auto or cpu")
    return torch.device(name)
