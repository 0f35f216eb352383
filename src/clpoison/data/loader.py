"""Feeding the training loop from a resident uint8 dataset.

The whole split sits in memory as one uint8 tensor (on the training device when it is a GPU: CIFAR-10 is
150 MB), so a batch is an index gather plus augmentation on the device — no per-image Python, no worker
processes. Each epoch's order is a permutation drawn from a generator seeded by (seed, epoch), so a resumed
run sees exactly the batches an uninterrupted run would.

Several processes (``rank`` / ``world_size``; ``batch_size`` is then this process's share): the global batches are
those one process would draw, and rank r takes the r-th slice of each — disjoint shards of every epoch's order.
"""

from __future__ import annotations

from typing import Any, Iterator, Optional

import torch

from ..errors import ClpoisonError, ConfigError
from .augment import TwoViewAugment


def from_workers(batches: Iterator[Any]) -> Iterator[Any]:
    """``batches`` (a loader over worker processes) with a user error raised in a worker given back as its own one
    line: torch re-raises it in this process with the worker's traceback folded into the message."""
    try:
        yield from batches
    except ClpoisonError as e:
        lines = [ln for ln in str(e).splitlines() if ln.strip()]
        if len(lines) > 1 and lines[0].startswith("Caught "):
            last = lines[-1]
            raise type(e)(last.split(": ", 1)[1] if last.startswith("clpoison.errors.") else last) from None
        raise


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    return torch.randperm(n, generator=g)


class ResidentBatches:
    """Shuffled uint8 batches of a dataset held on ``device``: ``for idx, images, sizes in rb.epoch(e)``.

    Works for any dataset with ``images`` (N,3,H,W) uint8 and optional ``sizes`` (image or image–caption data),
    or a streaming split with ``load(index)``."""

    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        device: torch.device,
        seed: int = 0,
        drop_last: bool = True,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"train.batch_size={batch_size} must be >= 1")
        if world_size > 1 and not drop_last:
            raise ConfigError("several processes need equal batches on every rank (drop_last)")
        per_rank = len(dataset) // world_size
        if batch_size > per_rank:
            raise ConfigError(
                f"train.batch_size={batch_size} is larger than the dataset ({per_rank} images per process); "
                "lower train.batch_size"
            )
        self.n = len(dataset)
        self.batch_size = batch_size
        self.device = device
        self.seed = seed
        self.drop_last = drop_last
        self.rank, self.world_size, self.shuffle = rank, world_size, shuffle
        self.streaming = hasattr(dataset, "load")  # e.g. StreamingImageFolder; resident datasets have .images
        if self.streaming:  # e.g. StreamingImageFolder: decode each batch on the host, then move it
            self.dataset = dataset
            self.sizes = None
        else:
            self.images = dataset.images.to(device)
            self.sizes = None if dataset.sizes is None else dataset.sizes.to(device)

    def __len__(self) -> int:
        per_rank = self.n // self.world_size
        return per_rank // self.batch_size if self.drop_last else -(-per_rank // self.batch_size)

    def order(self, epoch: int) -> torch.Tensor:
        """This process's indices of ``epoch``, in step order (on the host)."""
        perm = epoch_permutation(self.n, self.seed, epoch) if self.shuffle else torch.arange(self.n)
        if self.world_size > 1:  # global batch s is the one process's batch s; this rank draws its slice of it
            steps, b = len(self), self.batch_size
            perm = perm[: steps * b * self.world_size].view(steps, self.world_size, b)[:, self.rank].reshape(-1)
        return perm

    def index_batches(self, epoch: int) -> Iterator[torch.Tensor]:
        """This process's index batch of every step of ``epoch`` (on the host)."""
        perm = self.order(epoch)
        for s in range(len(self)):
            yield perm[s * self.batch_size : (s + 1) * self.batch_size]

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]]:
        perm = self.order(epoch)
        if not self.streaming:
            perm = perm.to(self.device)
        for s in range(len(self)):
            idx = perm[s * self.batch_size : (s + 1) * self.batch_size]
            if self.streaming:  # decoded here, batch by batch (data/image_stream.py decodes ahead in workers)
                yield idx, self.dataset.load(idx).to(self.device, non_blocking=True), None
            else:
                yield idx, self.images[idx], None if self.sizes is None else self.sizes[idx]


class TwoViewBatches:
    """Batches for image SSL: ``{"index", "views": (v1, v2)}`` made on the device by :class:`TwoViewAugment`."""

    def __init__(self, source: Any, augment: TwoViewAugment, channels_last: bool = False) -> None:  # Resident|StreamedImageBatches
        self.source = source
        self.augment = augment.to(source.device)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __len__(self) -> int:
        return len(self.source)

    def epoch(self, epoch: int) -> Iterator[dict[str, Any]]:
        for idx, images, sizes in self.source.epoch(epoch):
            v1, v2 = self.augment(images, sizes)
            yield {
                "index": idx,
                "views": (v1.contiguous(memory_format=self.memory_format), v2.contiguous(memory_format=self.memory_format)),
            }
