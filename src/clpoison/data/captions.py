"""Image–caption datasets (CLIP pretraining data).

A :class:`CaptionDataset` holds uint8 images (N,3,H,W) like :class:`~clpoison.data.datasets.ImageDataset`, and
for each image one or more captions (web data often has several; one is sampled per epoch). Labels are optional:
real scraped data has none; the bundled CIFAR-10 captions keep them for evaluation and attack bookkeeping only —
pretraining never reads them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from ..errors import DataError


@dataclass
class CaptionDataset:
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
