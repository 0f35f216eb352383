"""Image–caption datasets (CLIP pretraining data).

A :class:`CaptionDataset` holds uint8 images (N,3,H,W) like :class:`~clpoison.data.datasets.ImageDataset`, and
for each image one or more captions (web data often has several; one is sampled per epoch). Labels are optional:
real scraped data has none; the bundled CIFAR-10 captions keep them for evaluation and attack bookkeeping only —
pretraining never reads them.

A :class:`CaptionDataset` is the in-memory :class:`~clpoison.data.captions.pair_source.PairSource`: poisons replace or
append rows (:class:`ResidentEdit`), subsets are seeded choices of rows (:func:`untouched_rows`, :func:`range_rows`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from ...errors import ConfigError, DataError
from ..split_info import HeldInMemory
from .pair_source import ImageEdit, PoisonRecord


@dataclass
class CaptionDataset(HeldInMemory):
    images: torch.Tensor  # uint8 (N,3,H,W)
    captions: list[list[str]]  # captions[i] = the captions of image i (at least one)
    class_names: list[str] = field(default_factory=list)
    labels: Optional[torch.Tensor] = None  # int64 (N,), -1 where unknown; never used for pretraining
    name: str = "captions"
    sizes: Optional[torch.Tensor] = None  # (N,2) valid (h, w) when images share a padded canvas
    files: Optional[list[str]] = None  # the source file of each image, when decoded from files at native size

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3:
            raise DataError(f"{self.name}: images must be uint8 (N,3,H,W), got {tuple(self.images.shape)} {self.images.dtype}")
        if len(self.captions) != len(self.images):
            raise DataError(f"{self.name}: {len(self.captions)} caption lists for {len(self.images)} images; they must match")
        for i, caps in enumerate(self.captions):
            if isinstance(caps, str):
                self.captions[i] = caps = [caps]
            if not caps:
                raise DataError(f"{self.name}: image {i} has no caption; every image needs at least one")
        if self.files is not None and len(self.files) != len(self.images):
            raise DataError(f"{self.name}: {len(self.files)} source files for {len(self.images)} images")
        if self.labels is not None:
            self.labels = torch.as_tensor(self.labels, dtype=torch.int64)
            if len(self.labels) != len(self.images):
                raise DataError(f"{self.name}: {len(self.labels)} labels for {len(self.images)} images")

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, index: Sequence[int] | torch.Tensor, name: Optional[str] = None) -> "CaptionDataset":
        index = torch.as_tensor(index, dtype=torch.int64)
        return CaptionDataset(
            self.images[index],
            [list(self.captions[i]) for i in index.tolist()],
            list(self.class_names),
            None if self.labels is None else self.labels[index],
            name or self.name,
            None if self.sizes is None else self.sizes[index],
            None if self.files is None else [self.files[i] for i in index.tolist()],
        )

    # -- the PairSource protocol (data/captions/pair_source.py) --------------------------------------------------
    @property
    def canvas(self) -> tuple[int, int]:
        return int(self.images.shape[2]), int(self.images.shape[3])

    def editor(self, run_dir: Optional[Path] = None, echo: Callable[[str], None] = lambda s: None) -> "ResidentEdit":
        return ResidentEdit(self)

    def untouched_subset(self, count: int, poisons: Optional[np.ndarray], seed: int, name: str,
                         avoid: Sequence[Path] = (), world: int = 1, key: str = "count") -> tuple["CaptionDataset", dict]:
        rows = untouched_rows(len(self), poisons, count, seed, key)
        return self.subset(torch.as_tensor(rows, dtype=torch.long), name), {
            "split": "untouched", "poisons_in_split": 0 if poisons is None else int(np.isin(rows, poisons).sum())}

    def row_range(self, start: int, stop: int, poisons: Optional[np.ndarray], name: str,
                  key: str = "rows") -> "CaptionDataset":
        return self.subset(torch.as_tensor(range_rows(len(self), poisons, start, stop, key), dtype=torch.long), name)


def _poisoned(n: int, poisons: Optional[np.ndarray]) -> np.ndarray:
    poisoned = np.zeros(n, bool)
    if poisons is not None and len(poisons):
        poisoned[poisons[poisons < n]] = True
    return poisoned


def untouched_rows(n: int, poisons: Optional[np.ndarray], count: int, seed: int, key: str = "count") -> np.ndarray:
    """Sorted: ``count`` of the ``n`` rows, none of ``poisons``, drawn with ``seed`` (CleanCLIP's clean split)."""
    clean = np.flatnonzero(~_poisoned(n, poisons))
    if count > len(clean):
        raise ConfigError(f"{key}={count} exceeds the {len(clean)} training rows the attack did not touch; lower it")
    rng = np.random.default_rng(int(seed) * 7_919 + 12_345)
    return np.sort(rng.choice(clean, count, replace=False))


def range_rows(n: int, poisons: Optional[np.ndarray], start: int, stop: int, key: str = "rows") -> np.ndarray:
    """Rows ``[start, stop)`` of ``n``; one ConfigError line when the range ends past them or holds a poison."""
    if stop > n:
        raise ConfigError(f"{key}=[{start}, {stop}] ends past the {n} training rows")
    rows = np.arange(start, stop)
    bad = rows[_poisoned(n, poisons)[rows]]
    if len(bad):
        raise ConfigError(f"{key}=[{start}, {stop}] holds {len(bad)} poisoned training row(s) (first: {int(bad[0])}); "
                          "the split takes clean pairs only — choose a range without them or the untouched split")
    return rows


class ResidentEdit:
    """Poisons of a :class:`CaptionDataset`: chosen rows replaced in place, added pairs appended (a new dataset; the
    source is never modified)."""

    def __init__(self, train: CaptionDataset) -> None:
        self.train = train

    def reused(self, request: Callable[[], dict]) -> None:
        return None  # nothing is written in memory: every run draws its poisons

    def replace(self, rows: torch.Tensor, captions: list[list[str]], edit: ImageEdit,
                name: str) -> tuple[CaptionDataset, PoisonRecord]:
        t = self.train
        images = t.images.clone()
        if len(rows):
            images[rows] = edit(t.images[rows], None if t.sizes is None else t.sizes[rows])
        caps = [list(c) for c in t.captions]
        for i, c in zip(rows.tolist(), captions):
            caps[i] = list(c)
        out = CaptionDataset(images, caps, list(t.class_names), None if t.labels is None else t.labels.clone(),
                             t.name + name, None if t.sizes is None else t.sizes.clone())
        return out, PoisonRecord(poisoned=rows.tolist())

    def add(self, images: Sequence[torch.Tensor] | torch.Tensor, captions: list[list[str]], labels: Sequence[int],
            sizes: Optional[torch.Tensor], name: str) -> tuple[CaptionDataset, PoisonRecord]:
        t, k = self.train, len(captions)
        if k and tuple(images[0].shape) != tuple(t.images.shape[1:]):
            raise DataError(f"added images {tuple(images[0].shape)} and training images {tuple(t.images.shape[1:])} "
                            "differ in shape; add images of the training size")
        new = torch.cat([t.images, torch.stack(list(images))]) if k else t.images.clone()
        lab = None if t.labels is None else torch.cat([t.labels, torch.tensor(list(labels), dtype=torch.int64)])
        size = None
        if t.sizes is not None:
            add = sizes if sizes is not None else torch.tensor([list(t.images.shape[2:])] * k, dtype=torch.int64)
            size = torch.cat([t.sizes, add.view(-1, 2)])
        out = CaptionDataset(new, [list(c) for c in t.captions] + [list(c) for c in captions], list(t.class_names), lab,
                             t.name + name, size)
        return out, PoisonRecord(added=range(len(t), len(t) + k))

    def commit(self, manifest: dict) -> None:
        pass


@dataclass
class CaptionSplits:
    """CLIP data: a captioned train split and a test split (captions for retrieval, labels for zero-shot)."""

    train: CaptionDataset
    test: CaptionDataset
    source: dict = field(default_factory=dict)

    @property
    def class_names(self) -> list[str]:
        return self.train.class_names or self.test.class_names

    def describe(self) -> dict:
        def one(ds: CaptionDataset) -> dict:
            labelled = ds.labels is not None and bool((ds.labels >= 0).all()) and bool(ds.class_names)
            return {"pairs": len(ds), "captions": sum(len(c) for c in ds.captions), "labelled": labelled,
                    "shape": list(ds.images.shape[1:])}

        return {"source": self.source, "classes": self.class_names, "train": one(self.train), "test": one(self.test)}
