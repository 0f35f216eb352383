"""Streaming image–caption tar shards (the webdataset layout) that do not fit in memory — CC3M and larger.

``data.name: captions-tar`` with ``data.captions.stream: true``: the train shards are never loaded as a whole.
Each epoch:

* the shard list (``data.path``: one shard, a brace list ``shard-{000000..000099}.tar``, a folder of ``*.tar``, a
  glob) is shuffled by (seed, epoch), then split **by shard**: process r of W takes shards ``r, r+W, ...`` and its
  loader worker j of J takes every J-th of those — no sample is read twice, nothing is shared;
* workers (``data.captions.workers`` processes of :class:`torch.utils.data.DataLoader`) read their shards
  sequentially, decode and resize each image (``KEY.jpg|png|webp``; caption in ``KEY.txt`` or ``KEY.json``) to
  uint8 ``image_size × image_size``, pass the samples through a seeded shuffle buffer
  (``data.captions.shuffle_buffer``), and hand over uint8 batches;
* the training process picks one caption per image, tokenizes the batch, moves the uint8 images to the device and
  augments them there (:class:`~clpoison.data.captions.caption_loader.CaptionImageAugment`, as for resident data).

The split itself (shard list, counts, extra poison shards, a clean subset):
:class:`~clpoison.data.shards.shard_set.StreamingCaptionSet`; its CLIP batches:
:class:`~clpoison.data.shards.shard_batches.StreamingCaptionBatches`.

Every process yields the same number of steps, ``samples // global batch`` (DDP needs equal steps): a process whose
shards run out first starts its shards again (in the next seeded order). The number of samples is counted once from
the tar headers (no image is decoded). With ``shuffle_buffer: 0``, one process and one worker, the batches are the
samples in shard order — what :class:`~clpoison.data.captions.caption_loader.CaptionBatches` gives the same data held in
memory with ``shuffle=False`` (tested: same batches, same trained weights).
"""

from __future__ import annotations

import io
import itertools
import os
import random
import tarfile
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import torch

from ...errors import DataError
from ..captions.caption_rows import IMAGE_SUFFIXES, RowErrors
from ..captions.caption_shards import iter_shard_samples, tar_end_present
from ..image_readers import decode_image


def epoch_shards(shards: Sequence[Path], seed: int, epoch: int, shuffle: bool = True) -> list[Path]:
    shards = list(shards)
    if shuffle:
        random.Random(int(seed) * 1_000_003 + int(epoch)).shuffle(shards)
    return shards


def split_shards(shards: Sequence[Path], rank: int, world: int, worker: int = 0, workers: int = 1) -> list[Path]:
    """The shards of process ``rank`` (of ``world``), loader worker ``worker`` (of ``workers``): disjoint, complete."""
    return list(shards)[rank::world][worker::workers]


def count_samples(shards: Sequence[Path]) -> int:
    """Samples (distinct keys with an image member) in the shards, from the tar headers only."""
    return sum(shard_counts(shards))


def shard_counts(shards: Sequence[Path], on_error: str = "fail") -> list[int]:
    """The number of samples of each shard, from the tar headers only; a truncated shard is one DataError line
    (``on_error: skip``: counted as read; the reader then counts it as ``corrupt_shard``)."""
    counts = []
    for shard in shards:
        keys: set = set()
        try:
            with tarfile.open(shard, mode="r:*") as tf:
                for m in tf:
                    base = os.path.basename(m.name)
                    if m.isfile() and "." in base and base.split(".", 1)[1].lower() in IMAGE_SUFFIXES:
                        keys.add(os.path.join(os.path.dirname(m.name), base.split(".", 1)[0]))
                if on_error == "fail" and not tar_end_present(shard, tf.offset):
                    raise DataError(f"tar shard '{shard}' is truncated (no end-of-archive blocks after {tf.offset} "
                                    "bytes); re-create it, or set data.captions.on_error=skip to skip and count it")
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DataError(f"tar shard '{shard}' cannot be read ({type(e).__name__}); is it a tar file?") from None
        counts.append(len(keys))
    return counts


def limited_samples(shards: Sequence[Path], limits: dict[str, int], on_error: str = "fail",
                    errors: Optional[RowErrors] = None) -> Iterator[dict]:
    """:func:`iter_shard_samples` of ``shards``, reading a shard of ``limits`` only up to its count."""
    if not limits:
        yield from iter_shard_samples(list(shards), on_error, errors)
        return
    for shard in shards:
        it = iter_shard_samples([shard], on_error, errors)
        yield from (it if str(shard) not in limits else itertools.islice(it, limits[str(shard)]))


class ShardSampleStream(torch.utils.data.IterableDataset):
    """The samples of this process's shards for one pass: ``(uint8 image, captions)``; split further by worker.

    ``starts`` (:meth:`StreamingCaptionSet.shard_starts`): each sample also carries its global ordinal,
    ``(image, captions, ordinal)``; ``keep`` (a bool array indexed by ordinal): only those samples, the others are
    skipped before their image is decoded."""

    def __init__(self, shards: Sequence[Path], image_size: int, rank: int, world: int, seed: int, epoch: int,
                 shuffle_buffer: int = 0, on_error: str = "fail", limits: Optional[dict[str, int]] = None,
                 starts: Optional[dict[str, int]] = None, keep: Optional[Any] = None) -> None:
        self.shards, self.image_size, self.rank, self.world = list(shards), image_size, rank, world
        self.seed, self.epoch, self.buffer, self.on_error = seed, epoch, shuffle_buffer, on_error
        self.limits = dict(limits or {})
        self.starts, self.keep = starts, keep

    def worker_shards(self) -> list[Path]:
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        order = epoch_shards(self.shards, self.seed, self.epoch, shuffle=self.buffer > 0)
        return split_shards(order, self.rank, self.world, wid, nw)

    def _decoded(self, shards: list[Path]) -> Iterator[tuple]:
        errors = RowErrors(self.on_error)
        for s in limited_samples(shards, self.limits, errors=errors):
            if self.starts is not None:
                o = self.starts[s["shard"]] + s["index"]
                if self.keep is not None and not self.keep[o]:
                    continue
            try:
                img = decode_image(io.BytesIO(s["image"]), self.image_size)
            except DataError:
                errors("corrupt_image", f"{s['shard']}:{s['key']}.{s['ext']}", "image is unreadable or corrupt")
                continue
            yield (img, s["captions"]) if self.starts is None else (img, s["captions"], o)

    def __iter__(self) -> Iterator[tuple]:
        shards = self.worker_shards()
        if self.buffer <= 0:
            yield from self._decoded(shards)
            return
        info = torch.utils.data.get_worker_info()
        rng = random.Random(hash((self.seed, self.epoch, self.rank, 0 if info is None else info.id)))
        buf: list = []
        for sample in self._decoded(shards):
            if len(buf) < self.buffer:
                buf.append(sample)
                continue
            i = rng.randrange(len(buf))
            buf[i], sample = sample, buf[i]
            yield sample
        rng.shuffle(buf)
        yield from buf


def _collate(samples: list) -> tuple[torch.Tensor, list[list[str]]]:
    return torch.stack([s[0] for s in samples]), [s[1] for s in samples]
