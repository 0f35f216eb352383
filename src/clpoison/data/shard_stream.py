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
  augments them there (:class:`~clpoison.data.caption_loader.CaptionImageAugment`, as for resident data).

An attack on streamed data (:mod:`clpoison.attacks.stream_poison`) adds its poison shards to the shard list
(:meth:`StreamingCaptionSet.with_shards`): counted, shuffled, split and tokenized with the clean ones, and hashed
by every process (:meth:`StreamingCaptionSet.check_added`). :meth:`StreamingCaptionSet.first_samples` streams only the
first samples of some shards (CleanCLIP's clean fine-tuning split); ``epoch(e, raw=True)`` also hands over the
decoded uint8 batch and the chosen captions (the CLIP defenses' augmented views, :mod:`clpoison.defenses.stream_views`).

Every process yields the same number of steps, ``samples // global batch`` (DDP needs equal steps): a process whose
shards run out first starts its shards again (in the next seeded order). The number of samples is counted once from
the tar headers (no image is decoded). With ``shuffle_buffer: 0``, one process and one worker, the batches are the
samples in shard order — what :class:`~clpoison.data.caption_loader.CaptionBatches` gives the same data held in
memory with ``shuffle=False`` (tested: same batches, same trained weights).
"""

from __future__ import annotations

import copy
import hashlib
import io
import itertools
import os
import random
import tarfile
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import torch

from ..errors import DataError
from ..utils.io import sha256_file
from .caption_loader import CaptionImageAugment
from .caption_readers import IMAGE_SUFFIXES, _Errors
from .caption_shards import iter_shard_samples, shard_paths, tar_end_present
from .image_readers import decode_image
from .loader import from_workers


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


class StreamingCaptionSet:
    """A streamed train split: what the runner and the CLIP task need from a dataset (``len``, the captions for the
    tokenizer, a fingerprint by file) without holding the images."""

    streaming = True

    def __init__(self, spec: Any, image_size: int, on_error: str = "fail", name: str = "shards") -> None:
        self.shards = shard_paths(spec)
        self.image_size, self.on_error, self.name = image_size, on_error, name
        self.counts: Optional[list[int]] = shard_counts(self.shards, on_error)  # samples per shard (tar headers)
        self.n = sum(self.counts)
        if self.n == 0:
            raise DataError(f"tar shards {spec} hold no image; expected KEY.jpg|png|webp + KEY.txt members")
        self.items = [(p, -1) for p in self.shards]  # fingerprinted by file (path, size, mtime)
        self.class_names: list[str] = []
        self.labels = None
        self._captions: Optional[list[list[str]]] = None
        self.added: dict[str, str] = {}  # extra shards (an attack's poison shards): path -> sha256 when written
        self.limits: dict[str, int] = {}  # shard path -> samples read from its start (CleanCLIP's clean subset)

    def __len__(self) -> int:
        return self.n

    def __getstate__(self) -> dict:  # sent to other processes without the caption cache (they reload the tokenizer)
        return {**self.__dict__, "_captions": None}

    def with_shards(self, extra: Sequence[Path], sha256: Sequence[str], n: int,
                    captions: Optional[list[list[str]]] = None) -> "StreamingCaptionSet":
        """A copy that also streams ``extra`` shards (``n`` samples, their captions, each file's sha256), read after
        this set's shards in row order and split over processes and workers with them."""
        out = StreamingCaptionSet.__new__(StreamingCaptionSet)
        out.__dict__.update(self.__dict__)
        out.shards = self.shards + [Path(p) for p in extra]
        out.n = self.n + n
        out.counts = None if self.counts is None else self.counts + shard_counts(extra)
        out.items = self.items  # the clean files (the run's data fingerprint); the extra ones are hashed
        out.added = {**self.added, **{str(p): h for p, h in zip(extra, sha256)}}
        out._captions = None if self._captions is None or captions is None else self._captions + captions
        return out

    def first_samples(self, shards: Sequence[Path], n: int, name: str,
                      counts: Optional[Sequence[int]] = None) -> "StreamingCaptionSet":
        """A copy that streams only the first ``n`` samples of ``shards`` (in that order; ``counts``: their sample
        counts, else read from the tar headers): a shard is read up to the count (:attr:`limits`)."""
        out = StreamingCaptionSet.__new__(StreamingCaptionSet)
        out.__dict__.update(self.__dict__)
        out.shards, out.n, out.name, out._captions, out.added = [Path(p) for p in shards], int(n), name, None, {}
        out.items = [(p, -1) for p in out.shards]
        counts, left, out.limits = list(counts) if counts is not None else shard_counts(out.shards), int(n), {}
        for p, c in zip(out.shards, counts):
            if left < c:
                out.limits[str(p)] = left
            left = max(left - c, 0)
        if left:
            raise DataError(f"the {len(out.shards)} shards hold {sum(counts)} samples, fewer than {n}")
        out.counts = [min(c, out.limits.get(str(p), c)) for p, c in zip(out.shards, counts)]
        return out

    def shard_starts(self) -> dict[str, int]:
        """``{shard path: ordinal of its first sample}``: sample ``i`` of a shard has the global ordinal start + i
        (shard order = :attr:`shards`; the order of the same data held in memory)."""
        if self.counts is None:
            self.counts = shard_counts(self.shards)
        starts = itertools.accumulate([0, *self.counts[:-1]])
        return {str(p): int(a) for p, a in zip(self.shards, starts)}

    def stream_fingerprint(self) -> str:
        """sha256 of the shard list (file name and size of each shard, sha256 of each extra shard) and the count."""
        h = hashlib.sha256(f"stream:{self.n}\n".encode())
        for p in self.shards:
            added = self.added.get(str(p))
            h.update(f"{p.name}:{added if added else p.stat().st_size}\n".encode())
        return h.hexdigest()

    def check_added(self) -> dict[str, str]:
        """``{file name: sha256}`` of the extra shards as this process reads them; :class:`DataError` when one is
        missing or differs from what was written (every process must see the run folder)."""
        out = {}
        for path, want in self.added.items():
            try:
                got = sha256_file(path)
            except OSError:
                raise DataError(f"poison shard '{path}' is missing on this process; put the run folder on a file "
                                "system every process sees") from None
            if got != want:
                raise DataError(f"poison shard '{path}' changed since it was written (sha256 differs); re-run with "
                                "--overwrite to write it again")
            out[Path(path).name] = got
        return out

    @property
    def captions(self) -> list[list[str]]:
        """Every sample's captions in shard order (one pass over the shards; the images are skipped, not decoded)."""
        if self._captions is None:
            self._captions = [s["captions"] for s in limited_samples(self.shards, self.limits, self.on_error)]
        return self._captions


def limited_samples(shards: Sequence[Path], limits: dict[str, int], on_error: str = "fail",
                    errors: Optional[_Errors] = None) -> Iterator[dict]:
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
        errors = _Errors(self.on_error)
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


class StreamingCaptionBatches:
    """``{"images", "tokens", "caption_index"}`` batches of a :class:`StreamingCaptionSet` for CLIP; ``len`` steps per
    epoch on every process (``batch_size`` is this process's share of the global batch)."""

    def __init__(self, dataset: StreamingCaptionSet, tokenizer: Any, context_length: int, batch_size: int,
                 device: torch.device, seed: int = 0, augment: Optional[CaptionImageAugment] = None,
                 channels_last: bool = False, rank: int = 0, world_size: int = 1, workers: int = 2,
                 shuffle_buffer: int = 1000) -> None:
        if len(dataset.shards) < world_size:
            raise DataError(f"{len(dataset.shards)} shards cannot be split over {world_size} processes; write at least "
                            f"one shard per process (more shards than processes × data.captions.workers is best)")
        if batch_size * world_size > len(dataset):
            raise DataError(f"train.batch_size={batch_size * world_size} is larger than the {len(dataset)} streamed "
                            "samples; lower train.batch_size")
        self.dataset, self.tokenizer, self.context_length = dataset, tokenizer, context_length
        self.batch_size, self.device, self.seed = batch_size, device, seed
        self.rank, self.world, self.buffer = rank, world_size, shuffle_buffer
        self.workers = min(workers, -(-len(dataset.shards) // world_size))
        self.augment = (augment or CaptionImageAugment()).to(device)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __len__(self) -> int:
        return len(self.dataset) // (self.batch_size * self.world)

    def _loader(self, epoch: int, rep: int) -> torch.utils.data.DataLoader:
        stream = ShardSampleStream(self.dataset.shards, self.dataset.image_size, self.rank, self.world, self.seed,
                                   epoch * 1009 + rep, self.buffer, self.dataset.on_error, self.dataset.limits)
        seeds = torch.Generator().manual_seed(int(self.seed) * 1_000_003 + epoch * 1009 + rep)  # not the global RNG
        return torch.utils.data.DataLoader(stream, batch_size=self.batch_size, num_workers=self.workers,
                                           collate_fn=_collate, drop_last=True, pin_memory=self.device.type == "cuda",
                                           generator=seeds)

    def with_tokenizer(self, tokenizer: Any, context_length: int) -> "StreamingCaptionBatches":
        """The same batch source tokenizing with ``tokenizer`` (CleanCLIP: the loaded checkpoint's)."""
        out = copy.copy(self)
        out.tokenizer, out.context_length = tokenizer, context_length
        return out

    def epoch(self, epoch: int, raw: bool = False) -> Iterator[dict[str, Any]]:
        """The epoch's batches; ``raw``: each also holds ``images_uint8`` (the decoded batch on the device, before
        the augmentation) and ``texts`` (the caption chosen for each image) — what the CLIP defenses' views need."""
        g = torch.Generator().manual_seed(int(self.seed) * 1_000_003 + int(epoch) + 7_777_777)
        done, rep = 0, 0
        while done < len(self):
            got = 0
            for images, caps in from_workers(self._loader(epoch, rep)):
                choice = [c[int(torch.randint(len(c), (1,), generator=g))] if len(c) > 1 else c[0] for c in caps]
                tok = self.tokenizer.encode(choice, self.context_length)
                tok = tok[:, : int((tok != 0).sum(1).max())].to(self.device, non_blocking=True)
                raw_images = images.to(self.device, non_blocking=True)
                batch = {"images": self.augment(raw_images, None).contiguous(memory_format=self.memory_format),
                         "tokens": tok}
                yield {**batch, "images_uint8": raw_images, "texts": choice} if raw else batch
                done, got = done + 1, got + 1
                if done == len(self):
                    return
            if got == 0:
                raise DataError(f"process {self.rank}'s shards yield no full batch of {self.batch_size}; lower "
                                "train.batch_size or write more, equally sized shards")
            rep += 1  # this process's shards ran out before the others': read them again, in a new order
