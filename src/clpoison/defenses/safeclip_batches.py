"""SafeCLIP's batch source: every phase's batches (unimodal pairs of views and EDA captions, CLIP pairs) drawn
from the resident CLIP data, following the epoch plan the defense sets, and the similarity pass of Phase C.

EDA captions are computed once when the batch source is built (as the official ``src/data.py``), see
:mod:`clpoison.data.eda`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.augment import crop_resize_flip
from ..data.caption_loader import CaptionBatches, CaptionImageAugment
from ..data.loader import epoch_permutation
from ..utils.dist import all_gather_nograd, rank, world_size
from .safeclip_params import SafeCLIPParams


def pad_cat(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Trim two token batches to one common length (the longest caption of either)."""
    n = int(max((a != 0).sum(1).max(), (b != 0).sum(1).max()))
    return a[:, :n], b[:, :n]


class SafeCLIPBatches:
    """Batches for every SafeCLIP phase, drawn from a :class:`CaptionBatches` (its resident images, tokens,
    caption choice and geometric augmentation) plus two frozen EDA token views. ``set_plan(epoch, segments)`` with
    ``segments = [(kind, indices), ...]`` (kind ``inmodal`` or ``clip``) decides what ``epoch(epoch)`` yields:
    each segment in order, its indices shuffled by (seed, epoch) and cut into ``round(n / batch_size)`` nearly
    equal batches (so a small subset still trains)."""

    def __init__(self, base: CaptionBatches, eda_tokens: tuple[torch.Tensor, torch.Tensor], params: SafeCLIPParams,
                 photometric: nn.Module) -> None:
        self.base, self.params = base, params
        self.eda1, self.eda2 = (t.to(base.device) for t in eda_tokens)
        self.photometric = photometric.to(base.device)
        a = base.augment  # the same crop/resize/normalise with the whole image as the box and no flip
        self.unaugmented = CaptionImageAugment(a.out_size, "none", flip_p=0.0, mean=a.mean.flatten().tolist(),
                                               std=a.std.flatten().tolist()).to(base.device)
        self.rank, self.world = rank(), world_size()
        self.batch_size = base.batch_size * self.world  # the global batch (``base`` draws this process's share)
        self.plans: dict[int, list[tuple[str, torch.Tensor]]] = {}

    def __len__(self) -> int:
        return len(self.base)

    @property
    def n(self) -> int:
        return self.base.n

    def set_plan(self, epoch: int, segments: list[tuple[str, Any]]) -> None:
        self.plans = {epoch: [(k, torch.as_tensor(np.asarray(i), dtype=torch.long)) for k, i in segments]}

    def segment_steps(self, n: int) -> int:
        return 0 if n < 2 else max(1, round(n / self.batch_size))

    def plan_steps(self, epoch: int) -> list[tuple[str, int]]:
        return [(k, self.segment_steps(len(i))) for k, i in self.plans.get(epoch, [])]

    def clean_view(self, idx: torch.Tensor) -> torch.Tensor:
        """The images as stored (whole valid area, no flip), resized to the training size and normalised."""
        b = self.base
        return self.unaugmented(b.images[idx], None if b.sizes is None else b.sizes[idx]).contiguous(
            memory_format=b.memory_format)

    def view(self, idx: torch.Tensor, strong: bool) -> torch.Tensor:
        b = self.base
        aug = b.augment
        if not strong:
            out = aug(b.images[idx], None if b.sizes is None else b.sizes[idx])
        else:
            x = b.images[idx].float().div(255.0)
            n, _, hc, wc = x.shape
            hw = b.sizes[idx] if b.sizes is not None else torch.tensor([[hc, wc]], device=x.device).expand(n, 2)
            flip = torch.rand(n, device=x.device) < aug.flip_p
            x = crop_resize_flip(x, aug.boxes(hw), (aug.out_size, aug.out_size), flip)
            out = self.photometric(x)
        return out.contiguous(memory_format=b.memory_format)

    def make_batch(self, kind: str, idx: torch.Tensor, choice: torch.Tensor) -> dict[str, Any]:
        rows = choice[idx]
        strong_all = self.params.image_aug == "official"
        if kind == "clip" and not self.params.cross_aug:
            tok = self.base.tokens[rows]
            tok = tok[:, : int((tok != 0).sum(1).max())]
            return {"phase": "clip", "index": idx, "images": self.view(idx, strong_all), "tokens": tok}
        strong = strong_all or kind == "inmodal"
        t1, t2 = pad_cat(self.eda1[rows], self.eda2[rows])
        return {"phase": kind, "index": idx, "images": self.view(idx, strong), "images2": self.view(idx, strong),
                "tokens": t1, "tokens2": t2}

    def epoch(self, epoch: int):
        b = self.base
        segments = self.plans.get(epoch)
        if segments is None:
            raise RuntimeError(f"SafeCLIPBatches: no plan for epoch {epoch}; the defense's on_epoch_start hook sets it")
        choice = b.caption_choice(epoch)
        for j, (kind, idx) in enumerate(segments):
            steps = self.segment_steps(len(idx))
            if steps == 0:
                continue
            perm = idx.to(b.device)[epoch_permutation(len(idx), b.seed, epoch * 16 + j).to(b.device)]
            for chunk in torch.tensor_split(perm, steps):
                if self.world > 1:  # this rank's equal slice of the global batch (a remainder < world is left out)
                    k = len(chunk) // self.world
                    chunk = chunk[self.rank * k:(self.rank + 1) * k]
                    if k == 0:
                        continue
                yield self.make_batch(kind, chunk, choice)

    @torch.no_grad()
    def similarities(self, model: nn.Module, epoch: int) -> np.ndarray:
        """cos(image, caption) of every pair, eval mode. ``similarity_view`` official: image view 1 and EDA caption 1
        (the official code's view 0 of the augmented data); clean: the stored image and the caption as written."""
        was = model.training
        model.eval()
        choice = self.base.caption_choice(epoch)
        g = torch.random.get_rng_state()
        torch.manual_seed(int(self.base.seed) * 7_919 + epoch)  # the pass does not shift the training RNG stream
        out = []
        bs = self.params.eval_batch_size
        clean = self.params.similarity_view == "clean"
        mine = torch.arange(self.rank, self.n, self.world, device=self.base.device)  # several processes: every world-th
        for s in range(0, len(mine), bs):
            idx = mine[s:s + bs]
            rows = choice[idx]
            tok = (self.base.tokens if clean else self.eda1)[rows]
            tok = tok[:, : int((tok != 0).sum(1).max())]
            img = model.encode_image(self.clean_view(idx) if clean else self.view(idx, self.params.image_aug == "official"))
            txt = model.encode_text(tok)
            out.append((img.float() * txt.float()).sum(1).cpu())
        torch.random.set_rng_state(g)
        model.train(was)
        return self._gather_scores(torch.cat(out)).numpy()

    def _gather_scores(self, local: torch.Tensor) -> torch.Tensor:
        """Every rank's scores (rank r scored pairs r, r + world, ...) in pair order: the same array on every rank."""
        if self.world == 1:
            return local
        m = -(-self.n // self.world)
        padded = torch.zeros(m, dtype=local.dtype, device=self.base.device)
        padded[: len(local)] = local.to(self.base.device)
        got = all_gather_nograd(padded).cpu()
        out = torch.empty(self.n, dtype=local.dtype)
        for q in range(self.world):
            k = len(range(q, self.n, self.world))
            out[q::self.world] = got[q * m:q * m + k]
        return out
