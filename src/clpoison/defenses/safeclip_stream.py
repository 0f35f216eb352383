"""SafeCLIP's batch source on **streamed** caption shards (``data.captions.stream: true``): the same phases, the same
epoch plan and the same split as :class:`~clpoison.defenses.safeclip_batches.SafeCLIPBatches`, without holding the
data in memory.

* **Ordinals.** Every streamed sample has a global ordinal: the first ordinal of its shard
  (:meth:`~clpoison.data.shard_stream.StreamingCaptionSet.shard_starts`, from the tar headers) plus its position in
  the shard — the index the same data would have in memory (the poison shards come after the clean ones, so the
  manifest's ``added_indices`` are their ordinals).
* **Similarity pass** (Phase C): each process scores the samples of its shards (every ``world``-th shard, in shard
  order) — the clean view and the written caption, or the augmented view and EDA caption 1, per
  ``similarity_view`` — and the scores are gathered into one array indexed by ordinal, the same on every process;
  the defense's GMM split then runs on it as in memory.
* **Segments in order.** A filtering epoch's plan ``[("inmodal", risky), ("clip", safe)]`` is two passes over the
  shards: the first yields only risky samples, the second only safe ones (the others are skipped before their image
  is decoded); Phases A and B are one pass over everything.
* **Equal steps** (DDP): a segment of ``n`` samples has ``n // global batch`` steps (a segment smaller than one
  global batch: one step of ``n // world`` per process); every process yields exactly that many batches of that
  kind, reading its shards (the epoch's seeded shard order, split by process) and, if they run short, reading them
  again in a new seeded order. A process whose shards hold fewer samples of the kind than one batch reads every
  shard holding some (a small risky set then gives some samples to several processes).

Per sample, the caption (when a sample has several) is drawn from (seed, epoch, ordinal) and the two EDA views
from (seed, caption text) (:func:`~clpoison.defenses.stream_views.eda_caption`): the same on every process and after
a resume. Deviations from memory: docs/safeclip.md, "On streamed data".
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from ..data.shard_stream import ShardSampleStream, StreamingCaptionBatches, epoch_shards, split_shards
from ..errors import DataError
from ..utils.dist import all_gather_object
from .clip_views import stored_view, strong_view, trim
from .safeclip_batches import pad_cat
from .safeclip_params import SafeCLIPParams
from .stream_views import eda_caption


def _collate(samples: list) -> tuple[torch.Tensor, list[list[str]], torch.Tensor]:
    return (torch.stack([s[0] for s in samples]), [s[1] for s in samples],
            torch.tensor([s[2] for s in samples], dtype=torch.long))


def pick_caption(captions: list[str], seed: int, epoch: int, ordinal: int) -> str:
    """The caption of a sample this epoch (deterministic in (seed, epoch, ordinal))."""
    if len(captions) == 1:
        return captions[0]
    return captions[random.Random(int(seed) * 1_000_003 + int(epoch) * 7_919_993 + int(ordinal)).randrange(len(captions))]


class StreamingSafeCLIPBatches:
    """:class:`~clpoison.defenses.safeclip_batches.SafeCLIPBatches`' interface (``n``, ``set_plan``,
    ``plan_steps``, ``epoch``, ``similarities``) over a :class:`StreamingCaptionBatches` (its shards, tokenizer,
    per-process batch, augmentation, workers and shuffle buffer)."""

    def __init__(self, base: StreamingCaptionBatches, params: SafeCLIPParams, photometric: nn.Module, seed: int) -> None:
        self.base, self.params, self.seed = base, params, int(seed)
        self.dataset = base.dataset
        self.starts = self.dataset.shard_starts()
        self.counts = dict(zip(self.starts, self.dataset.counts))
        self.photometric = photometric.to(base.device)
        self.clean = stored_view(base.augment).to(base.device)
        self.rank, self.world = base.rank, base.world
        self.batch_size = base.batch_size * self.world  # the global batch
        self.plans: dict[int, list[tuple[str, np.ndarray]]] = {}
        self.unscored = 0  # samples the last similarity pass could not score (skipped corrupt images)

    def __len__(self) -> int:
        return len(self.base)

    @property
    def n(self) -> int:
        return len(self.dataset)

    # -- the plan ------------------------------------------------------------------------------------------------
    def set_plan(self, epoch: int, segments: list[tuple[str, Any]]) -> None:
        plan = []
        for kind, idx in segments:
            keep = np.zeros(self.n, dtype=bool)
            keep[np.asarray(idx, dtype=np.int64)] = True
            plan.append((kind, keep))
        self.plans = {epoch: plan}

    def segment_shape(self, count: int) -> tuple[int, int]:
        """(steps, samples per process per step) of a segment of ``count`` samples (equal on every process)."""
        if count < 2 or count < self.world:
            return 0, 0
        if count < self.batch_size:
            return 1, count // self.world
        return count // self.batch_size, self.base.batch_size

    def plan_steps(self, epoch: int) -> list[tuple[str, int]]:
        return [(k, self.segment_shape(int(keep.sum()))[0]) for k, keep in self.plans.get(epoch, [])]

    # -- the views -----------------------------------------------------------------------------------------------
    def tokens(self, texts: list[str]) -> torch.Tensor:
        b = self.base
        return b.tokenizer.encode(texts, b.context_length).to(b.device, non_blocking=True)

    def eda_tokens(self, texts: list[str], view: int) -> torch.Tensor:
        return self.tokens([eda_caption(t, 2 * self.seed + view, self.params.eda_alpha) for t in texts])

    def view(self, raw: torch.Tensor, strong: bool) -> torch.Tensor:
        b = self.base
        if strong:
            return strong_view(b.augment, self.photometric, raw, None, b.memory_format)
        return b.augment(raw, None).contiguous(memory_format=b.memory_format)

    def make_batch(self, kind: str, raw: torch.Tensor, texts: list[str], ordinals: torch.Tensor) -> dict[str, Any]:
        p = self.params
        index = ordinals.to(self.base.device)
        strong_all = p.image_aug == "official"
        if kind == "clip" and not p.cross_aug:
            return {"phase": "clip", "index": index, "images": self.view(raw, strong_all), "tokens": trim(self.tokens(texts))}
        strong = strong_all or kind == "inmodal"
        t1, t2 = pad_cat(self.eda_tokens(texts, 0), self.eda_tokens(texts, 1))
        return {"phase": kind, "index": index, "images": self.view(raw, strong), "images2": self.view(raw, strong),
                "tokens": t1, "tokens2": t2}

    # -- the passes ----------------------------------------------------------------------------------------------
    def loader(self, shards: list[Path], stream_epoch: int, keep: Any, batch_size: int,
               drop_last: bool = True) -> torch.utils.data.DataLoader:
        b, ds = self.base, self.dataset
        stream = ShardSampleStream(shards, ds.image_size, 0, 1, self.seed, stream_epoch, b.buffer if keep is not None
                                   else 0, ds.on_error, ds.limits, self.starts, keep)
        seeds = torch.Generator().manual_seed(self.seed * 1_000_003 + stream_epoch + 3_333_333)
        return torch.utils.data.DataLoader(stream, batch_size=batch_size, num_workers=min(b.workers, len(shards)),
                                           collate_fn=_collate, drop_last=drop_last,
                                           pin_memory=b.device.type == "cuda", generator=seeds)

    def segment_shards(self, keep: np.ndarray, stream_epoch: int, need: int, wide: bool) -> tuple[list[Path], bool]:
        """This process's shards holding samples of the segment (the epoch's seeded order, split by process); every
        such shard (in a per-process order) when this process's hold fewer than ``need`` or ``wide``."""
        held = {p: int(keep[a:a + self.counts[p]].sum()) for p, a in self.starts.items()}
        order = epoch_shards(self.dataset.shards, self.seed, stream_epoch)
        mine = [p for p in split_shards(order, self.rank, self.world) if held[str(p)]]
        if not wide and sum(held[str(p)] for p in mine) >= need:
            return mine, False
        order = epoch_shards(self.dataset.shards, self.seed, stream_epoch * 31 + self.rank)
        return [p for p in order if held[str(p)]], True

    def segment(self, epoch: int, j: int, kind: str, keep: np.ndarray) -> Iterator[dict[str, Any]]:
        steps, bs = self.segment_shape(int(keep.sum()))
        done, rep, wide = 0, 0, False
        while done < steps:
            stream_epoch = (epoch * 16 + j) * 1009 + rep
            shards, wide = self.segment_shards(keep, stream_epoch, bs, wide)
            got = 0
            for images, caps, ords in self.loader(shards, stream_epoch, keep, bs):
                texts = [pick_caption(c, self.seed, epoch, int(o)) for c, o in zip(caps, ords)]
                yield self.make_batch(kind, images.to(self.base.device, non_blocking=True), texts, ords)
                done, got = done + 1, got + 1
                if done == steps:
                    return
            if got == 0 and wide:
                raise DataError(f"process {self.rank} finds no full batch of {bs} '{kind}' samples in the shards; "
                                "lower train.batch_size or data.captions.workers")
            wide = wide or got == 0  # this process's shards gave no full batch: read every shard of the kind
            rep += 1

    def epoch(self, epoch: int) -> Iterator[dict[str, Any]]:
        segments = self.plans.get(epoch)
        if segments is None:
            raise RuntimeError(f"StreamingSafeCLIPBatches: no plan for epoch {epoch}; the defense's on_epoch_start "
                               "hook sets it")
        for j, (kind, keep) in enumerate(segments):
            yield from self.segment(epoch, j, kind, keep)

    @torch.no_grad()
    def similarities(self, model: nn.Module, epoch: int) -> np.ndarray:
        """cos(image, caption) of every sample, indexed by ordinal, the same array on every process (see the
        module doc); ``similarity_view`` as :meth:`SafeCLIPBatches.similarities`."""
        was = model.training
        model.eval()
        g = torch.random.get_rng_state()
        torch.manual_seed(self.seed * 7_919 + epoch)  # the pass does not shift the training RNG stream
        clean = self.params.similarity_view == "clean"
        strong = self.params.image_aug == "official"
        mine = split_shards(self.dataset.shards, self.rank, self.world)
        ords, scores = [], []
        for images, caps, o in self.loader(mine, 0, None, self.params.eval_batch_size, drop_last=False):
            raw = images.to(self.base.device, non_blocking=True)
            texts = [pick_caption(c, self.seed, epoch, int(k)) for c, k in zip(caps, o)]
            tok = trim(self.tokens(texts) if clean else self.eda_tokens(texts, 0))
            img = model.encode_image(self.clean(raw, None).contiguous(memory_format=self.base.memory_format)
                                     if clean else self.view(raw, strong))
            txt = model.encode_text(tok)
            ords.append(o.numpy())
            scores.append((img.float() * txt.float()).sum(1).cpu().numpy())
        torch.random.set_rng_state(g)
        model.train(was)
        local = (np.concatenate(ords) if ords else np.zeros(0, np.int64),
                 np.concatenate(scores) if scores else np.zeros(0, np.float32))
        parts = all_gather_object(local) if self.world > 1 else [local]
        out = np.full(self.n, np.nan, dtype=np.float32)
        for o, s in parts:
            out[o] = s
        missing = np.isnan(out)
        self.unscored = int(missing.sum())
        if self.unscored:  # skipped (corrupt) samples: never yielded; scored at the mean so the GMM is not pulled
            out[missing] = float(out[~missing].mean()) if (~missing).any() else 0.0
        return out
