"""SafeCLIP's batch source: every phase's batches (unimodal pairs of views and EDA captions, CLIP pairs) following the
epoch plan the defense sets, and the similarity pass of Phase C — written once over the run's CLIP batch source, in
memory or streamed (:class:`~clpoison.data.captions.pair_source.PairBatches`).

Samples are named by ordinal (the row in memory; on a stream the shard's first ordinal plus the position, the same
number). What the two sources do differently stays theirs: the EDA captions (in memory computed once when the batch
source is built, as the official ``src/data.py``; streamed per caption text), a segment (in memory the rows shuffled
by (seed, epoch) and cut into ``round(n / batch)`` nearly equal batches; streamed a pass over the shards that yields
only the segment's samples, ``n // batch`` full ones) and the similarity pass's split over processes (in memory every
``world``-th row; streamed every ``world``-th shard, gathered by ordinal) — see docs/safeclip.md, "On streamed data".
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ...data.captions.pair_source import PairBatches
from ..clip_views import stored_view, strong_view, trim
from .safeclip_groups import digest_keys, row_digests
from .safeclip_params import SafeCLIPParams


def pad_cat(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Trim two token batches to one common length (the longest caption of either)."""
    n = int(max((a != 0).sum(1).max(), (b != 0).sum(1).max()))
    return a[:, :n], b[:, :n]


class SafeCLIPBatches:
    """Batches for every SafeCLIP phase, drawn from the run's batch source ``base`` (its images, caption choice and
    geometric augmentation) plus two EDA caption views (seeded by ``seed``). ``set_plan(epoch, segments)`` with
    ``segments = [(kind, indices), ...]`` (kind ``inmodal`` or ``clip``) decides what ``epoch(epoch)`` yields: each
    segment in order, ``plan_steps`` batches of its samples."""

    def __init__(self, base: PairBatches, tokenizer: Any, context_length: int, params: SafeCLIPParams,
                 photometric: nn.Module, seed: int) -> None:
        self.base, self.params = base, params
        self.eda = base.eda_views(tokenizer, context_length, seed, params.eda_alpha, views=2)
        self.photometric = photometric.to(base.device)
        self.clean = stored_view(base.augment).to(base.device)  # the whole image, no flip, normalised
        self.plans: dict[int, list[tuple[str, np.ndarray]]] = {}

    def __len__(self) -> int:
        return len(self.base)

    @property
    def n(self) -> int:
        return self.base.n

    @property
    def unscored(self) -> int:
        return self.base.unscored  # streamed: samples skipped as corrupt by the last similarity pass

    def set_plan(self, epoch: int, segments: list[tuple[str, Any]]) -> None:
        self.plans = {epoch: [(k, np.asarray(i, dtype=np.int64)) for k, i in segments]}

    def plan_steps(self, epoch: int) -> list[tuple[str, int]]:
        return [(k, self.base.segment_steps(len(i))) for k, i in self.plans.get(epoch, [])]

    def view(self, raw: dict[str, Any], strong: bool) -> torch.Tensor:
        b = self.base
        if strong:
            return strong_view(b.augment, self.photometric, raw["images_uint8"], raw["sizes"], b.memory_format)
        return b.augment(raw["images_uint8"], raw["sizes"]).contiguous(memory_format=b.memory_format)

    def make_batch(self, kind: str, raw: dict[str, Any]) -> dict[str, Any]:
        p = self.params
        strong_all = p.image_aug == "official"
        if kind == "clip" and not p.cross_aug:
            return {"phase": "clip", "index": raw["index"], "images": self.view(raw, strong_all),
                    "tokens": trim(self.base.caption_tokens(raw))}
        strong = strong_all or kind == "inmodal"
        t1, t2 = pad_cat(self.eda(raw, 0), self.eda(raw, 1))
        return {"phase": kind, "index": raw["index"], "images": self.view(raw, strong),
                "images2": self.view(raw, strong), "tokens": t1, "tokens2": t2}

    def epoch(self, epoch: int):
        segments = self.plans.get(epoch)
        if segments is None:
            raise RuntimeError(f"SafeCLIPBatches: no plan for epoch {epoch}; the defense's on_epoch_start hook sets it")
        for j, (kind, idx) in enumerate(segments):
            for raw in self.base.segment(epoch, j, idx):
                yield self.make_batch(kind, raw)

    @torch.no_grad()
    def similarities(self, model: nn.Module, epoch: int) -> np.ndarray:
        """cos(image, caption) of every pair, eval mode, by ordinal. ``similarity_view`` official: image view 1 and
        EDA caption 1 (the official code's view 0 of the augmented data); clean: the stored image and the caption as
        written."""
        was = model.training
        model.eval()
        g = torch.random.get_rng_state()
        torch.manual_seed(int(self.base.seed) * 7_919 + epoch)  # the pass does not shift the training RNG stream
        clean, strong = self.params.similarity_view == "clean", self.params.image_aug == "official"
        fmt = self.base.memory_format

        def score(raw: dict[str, Any]) -> torch.Tensor:
            tok = trim(self.base.caption_tokens(raw) if clean else self.eda(raw, 0))
            img = model.encode_image(self.clean(raw["images_uint8"], raw["sizes"]).contiguous(memory_format=fmt)
                                     if clean else self.view(raw, strong))
            txt = model.encode_text(tok)
            return (img.float() * txt.float()).sum(1)

        out = self.base.score(score, epoch, self.params.eval_batch_size)
        torch.random.set_rng_state(g)
        model.train(was)
        return out

    @torch.no_grad()
    def pair_keys(self) -> tuple[np.ndarray, np.ndarray]:
        """Exact keys of every pair's stored image and caption tokens (epoch 0's caption choice), by ordinal: one
        pass over the data, hashed on the device (:mod:`~clpoison.defenses.safeclip.safeclip_groups`)."""

        def digest(raw: dict[str, Any]) -> torch.Tensor:
            return torch.cat([row_digests(raw["images_uint8"], 1), row_digests(self.base.caption_tokens(raw), 2)], 1)

        out = self.base.score(digest, 0, self.params.eval_batch_size)  # streamed samples skipped as corrupt get
        # the column means: never trained, and they can only share a key with each other (a real key: ≈ 2**-48)
        return digest_keys(out[:, :2]), digest_keys(out[:, 2:])
