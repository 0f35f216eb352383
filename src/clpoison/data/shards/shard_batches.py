"""CLIP batches of a streamed training split (:class:`~clpoison.data.shards.shard_set.StreamingCaptionSet`): the
streamed implementation of :class:`~clpoison.data.captions.pair_source.PairBatches` (the resident one is
:class:`~clpoison.data.captions.caption_loader.CaptionBatches`).

* ``epoch(e)``: ``len`` steps on every process, from the shard stream of :mod:`clpoison.data.shards.shard_stream`
  (shards split by process and loader worker, a seeded shuffle buffer); ``raw=True`` also hands over the decoded uint8
  batch and the chosen caption texts (the CLIP defenses' augmented views).
* ``eda_views``: each batch's EDA captions are computed **per batch, with the same function**, each from an RNG
  seeded by the run's seed and a sha256 of the caption text (:func:`~clpoison.data.captions.eda.eda_caption`) — a
  caption gets the same view in every epoch, on every process and after a resume, whatever its position in the stream
  (deviation from memory: two identical captions get one view). View ``k`` of ``views`` is seeded
  ``views · seed + k``.
* **Ordinals.** Every sample has a global ordinal: the first ordinal of its shard (from the tar headers) plus its
  position in the shard — the index the same data would have in memory (poison shards come after the clean ones).
* ``segment(epoch, j, rows)``: one pass over the shards that yields only ``rows`` (the others are skipped before
  their image is decoded), ``segment_steps(len(rows))`` batches on every process: ``n // global batch`` full steps
  (a segment smaller than one global batch: one step of ``n // world`` per process); a process short of samples
  re-reads its shards in a new seeded order, one whose shards hold fewer than a batch of them reads every shard
  that holds some.
* ``score(fn, epoch, batch_size)``: each process scores the samples of its shards (every ``world``-th shard, in
  shard order); the scores are gathered into one array by ordinal, the same on every process; samples skipped as
  corrupt are scored at the mean (``unscored`` counts them).

Per sample, the caption (when a sample has several) of a segment or score pass is drawn from (seed, epoch, ordinal).
"""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch

from ...errors import DataError
from ...utils.dist import all_gather_object
from ..captions.caption_loader import CaptionBatches, CaptionImageAugment, flat_captions
from ..captions.eda import eda_caption
from ..loader import from_workers
from .shard_set import StreamingCaptionSet
from .shard_stream import ShardSampleStream, _collate, epoch_shards, split_shards


def _collate_ordinals(samples: list) -> tuple[torch.Tensor, list[list[str]], torch.Tensor]:
    return (torch.stack([s[0] for s in samples]), [s[1] for s in samples],
            torch.tensor([s[2] for s in samples], dtype=torch.long))


def pick_caption(captions: list[str], seed: int, epoch: int, ordinal: int) -> str:
    """The caption of a sample this epoch (deterministic in (seed, epoch, ordinal))."""
    if len(captions) == 1:
        return captions[0]
    return captions[random.Random(int(seed) * 1_000_003 + int(epoch) * 7_919_993 + int(ordinal)).randrange(len(captions))]


class TextViews:
    """EDA token views of a streamed batch's caption texts: ``views(batch, k)`` (see the module doc)."""

    def __init__(self, tokenizer: Any, context_length: int, seed: int, alpha: float, views: int,
                 device: torch.device) -> None:
        self.tokenizer, self.context_length, self.device = tokenizer, context_length, device
        self.seeds, self.alpha = [views * int(seed) + k for k in range(views)], float(alpha)

    def __call__(self, batch: dict[str, Any], k: int) -> torch.Tensor:
        texts = [eda_caption(t, self.seeds[k], self.alpha) for t in batch["texts"]]
        return self.tokenizer.encode(texts, self.context_length).to(self.device, non_blocking=True)


class StreamingCaptionBatches:
    """``{"images", "tokens"}`` batches of a :class:`StreamingCaptionSet` for CLIP; ``len`` steps per epoch on every
    process (``batch_size`` is this process's share of the global batch)."""

    def __init__(self, dataset: Any, tokenizer: Any, context_length: int, batch_size: int,
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
        self.unscored = 0  # samples the last score pass could not score (skipped corrupt images)

    def __len__(self) -> int:
        return len(self.dataset) // (self.batch_size * self.world)

    @property
    def n(self) -> int:
        return len(self.dataset)

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

    def eda_views(self, tokenizer: Any, context_length: int, seed: int, alpha: float, views: int = 1) -> TextViews:
        return TextViews(tokenizer, context_length, seed, alpha, views, self.device)

    def caption_tokens(self, batch: dict[str, Any]) -> torch.Tensor:
        """The tokens of a raw batch's chosen captions (full context length)."""
        return self.tokenizer.encode(batch["texts"], self.context_length).to(self.device, non_blocking=True)

    def epoch(self, epoch: int, raw: bool = False) -> Iterator[dict[str, Any]]:
        """The epoch's batches; ``raw``: each also holds ``images_uint8`` (the decoded batch on the device, before
        the augmentation), ``sizes`` (None: the stream resizes every image) and ``texts`` (the chosen captions)."""
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
                yield {**batch, "images_uint8": raw_images, "sizes": None, "texts": choice} if raw else batch
                done, got = done + 1, got + 1
                if done == len(self):
                    return
            if got == 0:
                raise DataError(f"process {self.rank}'s shards yield no full batch of {self.batch_size}; lower "
                                "train.batch_size or write more, equally sized shards")
            rep += 1  # this process's shards ran out before the others': read them again, in a new order

    # -- passes over samples named by ordinal (SafeCLIP's segments and similarity pass) ---------------------------
    def _ordinal_loader(self, shards: list[Path], stream_epoch: int, keep: Any, batch_size: int,
                        drop_last: bool = True) -> torch.utils.data.DataLoader:
        ds = self.dataset
        stream = ShardSampleStream(shards, ds.image_size, 0, 1, self.seed, stream_epoch, self.buffer if keep is not None
                                   else 0, ds.on_error, ds.limits, ds.shard_starts(), keep)
        seeds = torch.Generator().manual_seed(int(self.seed) * 1_000_003 + stream_epoch + 3_333_333)
        return torch.utils.data.DataLoader(stream, batch_size=batch_size, num_workers=min(self.workers, len(shards)),
                                           collate_fn=_collate_ordinals, drop_last=drop_last,
                                           pin_memory=self.device.type == "cuda", generator=seeds)

    def segment_shape(self, count: int) -> tuple[int, int]:
        """(steps, samples per process per step) of a segment of ``count`` samples (equal on every process)."""
        world, global_batch = self.world, self.batch_size * self.world
        if count < 2 or count < world:
            return 0, 0
        if count < global_batch:
            return 1, count // world
        return count // global_batch, self.batch_size

    def segment_steps(self, count: int) -> int:
        return self.segment_shape(count)[0]

    def _segment_shards(self, keep: np.ndarray, stream_epoch: int, need: int, wide: bool) -> tuple[list[Path], bool]:
        """This process's shards holding samples of the segment (the epoch's seeded order, split by process); every
        such shard (in a per-process order) when this process's hold fewer than ``need`` or ``wide``."""
        starts, ds = self.dataset.shard_starts(), self.dataset
        held = {p: int(keep[a:a + c].sum()) for (p, a), c in zip(starts.items(), ds.counts)}
        order = epoch_shards(ds.shards, self.seed, stream_epoch)
        mine = [p for p in split_shards(order, self.rank, self.world) if held[str(p)]]
        if not wide and sum(held[str(p)] for p in mine) >= need:
            return mine, False
        order = epoch_shards(ds.shards, self.seed, stream_epoch * 31 + self.rank)
        return [p for p in order if held[str(p)]], True

    def segment(self, epoch: int, j: int, rows: Any) -> Iterator[dict[str, Any]]:
        """Raw batches (``index`` = ordinals, ``images_uint8``, ``sizes``, ``texts``) of the samples ``rows``:
        segment ``j`` of ``epoch`` (see the module doc)."""
        keep = np.zeros(self.n, dtype=bool)
        keep[np.asarray(rows, dtype=np.int64)] = True
        steps, bs = self.segment_shape(int(keep.sum()))
        done, rep, wide = 0, 0, False
        while done < steps:
            stream_epoch = (epoch * 16 + j) * 1009 + rep
            shards, wide = self._segment_shards(keep, stream_epoch, bs, wide)
            got = 0
            for images, caps, ords in self._ordinal_loader(shards, stream_epoch, keep, bs):
                texts = [pick_caption(c, self.seed, epoch, int(o)) for c, o in zip(caps, ords)]
                yield {"index": ords.to(self.device), "images_uint8": images.to(self.device, non_blocking=True),
                       "sizes": None, "texts": texts}
                done, got = done + 1, got + 1
                if done == steps:
                    return
            if got == 0 and wide:
                raise DataError(f"process {self.rank} finds no full batch of {bs} samples of a segment in the shards; "
                                "lower train.batch_size or data.captions.workers")
            wide = wide or got == 0  # this process's shards gave no full batch: read every shard of the kind
            rep += 1

    def score(self, fn: Callable[[dict[str, Any]], torch.Tensor], epoch: int, batch_size: int) -> np.ndarray:
        """``fn(raw batch)`` of every sample — (B,) or (B, K) — as float32, indexed by ordinal, the same array on
        every process. A sample skipped as corrupt is scored at the mean of each column (``unscored`` counts them)."""
        mine = split_shards(self.dataset.shards, self.rank, self.world)
        ords, scores = [], []
        for images, caps, o in self._ordinal_loader(mine, 0, None, batch_size, drop_last=False):
            texts = [pick_caption(c, self.seed, epoch, int(k)) for c, k in zip(caps, o)]
            raw = {"index": o, "images_uint8": images.to(self.device, non_blocking=True), "sizes": None, "texts": texts}
            ords.append(o.numpy())
            scores.append(fn(raw).float().cpu().numpy())
        local = (np.concatenate(ords) if ords else np.zeros(0, np.int64),
                 np.concatenate(scores) if scores else np.zeros(0, np.float32))
        parts = all_gather_object(local) if self.world > 1 else [local]
        width = next((s.shape[1:] for _, s in parts if len(s)), ())
        out = np.full((self.n, *width), np.nan, dtype=np.float32)
        for o, s in parts:
            out[o] = s
        missing = np.isnan(out).reshape(self.n, -1).any(1)
        self.unscored = int(missing.sum())
        if self.unscored:  # skipped (corrupt) samples: never yielded; scored at the mean so the GMM is not pulled
            out[missing] = out[~missing].mean(0) if (~missing).any() else 0.0
        return out


def clip_batches(train: Any, tokenizer: Any, context_length: int, batch_size: int, device: torch.device, seed: int,
                 augment: CaptionImageAugment, channels_last: bool, rank: int, world_size: int, workers: int,
                 shuffle_buffer: int) -> tuple[Any, dict[str, Any]]:
    """The CLIP batch source of a training split — the one place that picks the implementation of
    :class:`~clpoison.data.captions.pair_source.PairBatches` — and what it records (in memory: the captions truncated to
    ``context_length``, all tokenized up front; streamed: nothing, the captions are tokenized per batch)."""
    if isinstance(train, StreamingCaptionSet):
        return StreamingCaptionBatches(train, tokenizer, context_length, batch_size, device, seed, augment,
                                       channels_last, rank, world_size, workers, shuffle_buffer), {}
    tokens = tokenizer.encode(flat_captions(train), context_length)
    info = {"truncated_train_captions": tokenizer.last_truncated}
    return CaptionBatches(train, tokens, batch_size, device, seed, augment, channels_last, rank=rank,
                          world_size=world_size), info
