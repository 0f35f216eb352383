"""Feeding the training loop from an ImageFolder split too large for memory: batches decoded in loader workers.

A :class:`~clpoison.data.image_readers.StreamingImageFolder` (an ImageFolder split over ``data.max_resident_gb``)
is read batch by batch. :class:`StreamedImageBatches` draws **the same batches** as
:class:`~clpoison.data.loader.ResidentBatches` — each epoch's order is the permutation seeded by (seed, epoch),
process r of W takes the r-th slice of every global batch — and has them decoded ahead of the training step:

* ``workers`` processes of :class:`torch.utils.data.DataLoader` (``data.stream_workers``, default 2): worker j of J
  decodes this process's batches ``j, j+J, ...`` of the epoch — disjoint, complete — and the loader hands them back in
  step order (its round robin over the workers), ``2 × J`` batches in flight;
* ``workers: 0`` decodes each batch in the training process when it is needed (the image decoder's thread pool);
* the training process moves the uint8 batch to the device, where it is augmented as resident data is
  (:class:`~clpoison.data.loader.TwoViewBatches`).

The indices and the images of every batch are those of the in-process path for the same seed (tested).
"""

from __future__ import annotations

from typing import Any, Iterator, Optional

import torch

from ..errors import ConfigError
from .loader import ResidentBatches, from_workers


def worker_steps(steps: int, worker: int, workers: int) -> range:
    """The steps of an epoch that loader worker ``worker`` (of ``workers``) decodes: disjoint, complete."""
    return range(worker, steps, workers)


class _BatchDecoder(torch.utils.data.IterableDataset):
    """This process's index batches of one epoch; each loader worker decodes its share: ``(worker, index, uint8)``."""

    def __init__(self, dataset: Any, index_batches: list[torch.Tensor]) -> None:
        self.dataset, self.index_batches = dataset, index_batches

    def __iter__(self) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        if info is None:  # in the training process: the decoder's thread pool does the work
            for idx in self.index_batches:
                yield 0, idx, self.dataset.load(idx)
            return
        for s in worker_steps(len(self.index_batches), info.id, info.num_workers):
            idx = self.index_batches[s]
            yield info.id, idx, self.dataset.load(idx, threads=1)  # the workers are the parallelism


class StreamedImageBatches(ResidentBatches):
    """``for idx, images, sizes in sb.epoch(e)``: :class:`~clpoison.data.loader.ResidentBatches`'s batches (its
    order, length and process share) of a streamed split (``dataset.load(index)``), decoded by ``workers`` loader
    processes (0: in this process)."""

    def __init__(self, dataset: Any, batch_size: int, device: torch.device, seed: int = 0, drop_last: bool = True,
                 rank: int = 0, world_size: int = 1, shuffle: bool = True, workers: int = 2) -> None:
        if workers < 0:
            raise ConfigError(f"data.stream_workers={workers} must be >= 0 (0 = decode in the training process)")
        if not hasattr(dataset, "load"):
            raise ValueError("StreamedImageBatches reads a streamed split (with load(index)); use ResidentBatches")
        super().__init__(dataset, batch_size, device, seed, drop_last, rank, world_size, shuffle)
        self.workers = workers

    def decoded(self, epoch: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """``(worker, index, uint8 images on the host)`` in step order (worker 0 when decoded in this process)."""
        batches = list(self.index_batches(epoch))
        workers = min(self.workers, len(batches))
        if workers == 0:
            yield from _BatchDecoder(self.dataset, batches)
            return
        seeds = torch.Generator().manual_seed(int(self.seed) * 1_000_003 + int(epoch))  # not the global RNG
        yield from from_workers(torch.utils.data.DataLoader(
            _BatchDecoder(self.dataset, batches), batch_size=None, num_workers=workers,
            pin_memory=self.device.type == "cuda", prefetch_factor=2, generator=seeds))  # a bad image: one line

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]]:
        for _, idx, images in self.decoded(epoch):
            yield idx, images.to(self.device, non_blocking=True), None
