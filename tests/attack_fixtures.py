"""Tiny synthetic caption data shared by the attack tests (no disk, no training)."""

import torch

from clpoison.data.captions import CaptionDataset, CaptionSplits

CLASSES = ["airplane", "cat", "dog"]


def tiny_caption_splits(n_train: int = 60, n_test: int = 30, size: int = 8, seed: int = 0) -> CaptionSplits:
    g = torch.Generator().manual_seed(seed)

    def split(n: int, name: str) -> CaptionDataset:
        labels = torch.arange(n) % len(CLASSES)
        images = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.int64).to(torch.uint8)
        caps = [[f"a photo of a {CLASSES[int(y)]} number {i}"] for i, y in enumerate(labels)]
        caps[0] = ["catalogue of airplanes"]  # substrings only: must not count as 'cat' or 'airplane'
        return CaptionDataset(images, caps, list(CLASSES), labels, name)

    return CaptionSplits(split(n_train, "tiny/train"), split(n_test, "tiny/test"), {"name": "tiny"})
