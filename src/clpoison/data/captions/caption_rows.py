"""What the image–caption readers share (:mod:`~clpoison.data.captions.caption_readers` for CSV files,
:mod:`~clpoison.data.captions.caption_shards` and :mod:`~clpoison.data.shards.shard_stream` for tar shards): the image
suffixes a sample may carry, the bad-row policy (:class:`RowErrors`: fail on the first, or skip and count by reason) and
the dataset built from the rows read (:func:`rows_dataset`)."""

from __future__ import annotations

import warnings
from collections import Counter
from typing import Optional

import torch

from ...errors import DataError
from ..datasets import stack_on_canvas
from .caption_dataset import CaptionDataset

IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp", "bmp")


class RowErrors:
    """Fail on the first bad row, or skip it and count it by reason."""

    def __init__(self, on_error: str) -> None:
        self.on_error = on_error
        self.counts: Counter = Counter()
        self.first: dict[str, str] = {}

    def __call__(self, reason: str, where: str, detail: str) -> None:
        msg = f"{where}: {detail}"
        if self.on_error == "fail":
            raise DataError(f"{msg}; fix or remove it, or set data.captions.on_error=skip to skip and count such rows")
        self.counts[reason] += 1
        self.first.setdefault(reason, msg)

    def report(self, what: str) -> dict:
        if self.counts:
            warnings.warn(f"{what}: skipped {dict(self.counts)} (first: {self.first})", stacklevel=3)
        return dict(self.counts)


def rows_dataset(images: list, captions: list, labels: list, name: str, labelled: bool,
                  files: Optional[list[str]] = None) -> CaptionDataset:
    """Images of one size are stacked; images read at their native, different sizes (no ``image_size``) share a
    zero-padded canvas with their valid sizes recorded (``sizes``)."""
    sizes = None
    if len({tuple(t.shape) for t in images}) > 1:
        x, sizes = stack_on_canvas(images)
    else:
        x = torch.stack(images)
    classes = sorted({l for l in labels if l}) if labelled else []
    y = torch.tensor([classes.index(l) if l else -1 for l in labels], dtype=torch.int64) if labelled else None
    return CaptionDataset(x, captions, classes, y, name, sizes, files)
