"""RoCLIP (Yang, Gao, Mirzasoleiman, NeurIPS 2023): robust CLIP pretraining by matching each image with the nearest
caption of a large, changing pool instead of its own caption — a poisoned image rarely retrieves its adversarial
caption, so the poisoned pairs are broken.

A *training-time* defense (``defense: {name: roclip}``) for the CLIP method, from the official code
(``model/src/train.py::get_loss``, ``memory_bank.py``; ``shared/reference/neighbours.md`` §2):

* a FIFO **pool of past text embeddings** (:class:`TextPool`, ``pool_size``, official 21,845), initialised with random
  unit vectors [code];
* on **matching epochs** — epoch ``e`` (counted from 1) with ``e % break_epoch == 0`` (official ``break_epoch`` 2) —
  each image embedding is matched to its nearest neighbour (cosine) in the pool, which is **queried first and
  updated afterwards** with the batch's caption embeddings (:meth:`RoCLIPMethod.update_state`, after the optimiser
  step); the loss is the symmetric CLIP loss between the images and their matched captions
  (:func:`roclip_matched_loss`). Pool entries are detached, so the text tower gets no gradient on those epochs;
* every other epoch is plain CLIP on the pairs;
* ``cross_aug`` (official ``--cross_aug``): every epoch trains on a strong image view and an EDA caption (computed
  once) instead of the originals (:mod:`clpoison.defenses.clip_views`).

Written once for data in memory and streamed caption shards (:class:`~clpoison.data.captions.pair_source.PairBatches`):
the pool needs nothing per pair; with ``cross_aug`` the EDA captions are the batch source's (in memory computed once per
caption row, streamed per batch, deterministic per caption text: :mod:`clpoison.data.shards.shard_batches`), the strong
view drawn on the device.

The pool is checkpointed beside the model (:class:`~clpoison.engine.schedules.TrainingHooks` ``state``), so a
resumed run continues exactly; the model's state dict stays the CLIP's (``clpoison evaluate`` / ``scan`` load it).
The pool is pushed only on matching epochs (the official memory bank is only called there) [inferred].

Under torchrun each process queries the pool with its own images and the loss gathers the matched captions of every
rank (:func:`~clpoison.methods.clip.clip_loss`); every process pushes the caption embeddings of **every** rank, in
rank order — the global batch, as one process would — so the pools stay identical and equal the single-process pool
(tested, ``tests/test_ddp_losses.py``). On matching epochs the text tower gets no gradient: DDP is told so
(``ddp_find_unused_parameters``).

Example::

    >>> import torch
    >>> pool = TextPool(4, 2, seed=0)
    >>> z = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=1)
    >>> pool.push(torch.cat([z, z])); torch.equal(pool.nearest(z.flip(0)), z.flip(0))
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..contexts import EpochView, TrainingContext
from ..data.captions.pair_source import PairBatches
from ..engine.schedules import TrainingHooks
from ..errors import ConfigError
from ..methods.base import Method
from ..methods.clip_wrapper import WrappedCLIP
from ..methods.clip import clip_loss
from ..utils.dist import all_gather_nograd
from .base import DEFENSES, ClipTrainingDefense, DefenseParams
from .clip_views import AugmentedBatches, require_pair_batches


@dataclass
class RoCLIPParams(DefenseParams):
    pool_size: int = 21845  # official memory bank size
    break_epoch: int = 2  # matching epochs: e % break_epoch == 0 (e counted from 1)
    cross_aug: bool = True  # strong image view + EDA caption every epoch (official --cross_aug)
    eda_alpha: float = 0.1

    def __post_init__(self) -> None:
        if self.pool_size < 1:
            raise ConfigError(f"defense.params.pool_size={self.pool_size} must be >= 1")
        if self.break_epoch < 1:
            raise ConfigError(f"defense.params.break_epoch={self.break_epoch} must be >= 1")

    def matching(self, epoch: int) -> bool:
        """Whether 0-based ``epoch`` matches images to pooled captions."""
        return (epoch + 1) % self.break_epoch == 0


class TextPool(nn.Module):
    """FIFO pool of L2-normalised text embeddings, initialised with random unit vectors. ``nearest(q)`` returns the
    pool row of largest cosine with each query (no gradient, changes nothing); ``push(z)`` overwrites the oldest rows.
    Its buffers are persistent: the pool's ``state_dict`` is what the checkpoint holds."""

    def __init__(self, size: int, dim: int, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(int(seed) * 31 + 5)
        self.register_buffer("bank", F.normalize(torch.randn(size, dim, generator=g), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def nearest_index(self, q: torch.Tensor) -> torch.Tensor:
        return (F.normalize(q.detach().float(), dim=1) @ self.bank.t()).argmax(1)

    @torch.no_grad()
    def nearest(self, q: torch.Tensor) -> torch.Tensor:
        return self.bank[self.nearest_index(q)]

    @torch.no_grad()
    def push(self, z: torch.Tensor) -> None:
        size = len(self.bank)
        z = F.normalize(z.detach().float(), dim=1)[-size:]
        p = int(self.ptr)
        self.bank[(torch.arange(len(z), device=z.device) + p) % size] = z
        self.ptr.fill_((p + len(z)) % size)


def roclip_matched_loss(image: torch.Tensor, pool: TextPool, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric CLIP loss between the images and their nearest pooled captions (queried, not updated)."""
    return clip_loss(image, pool.nearest(image).to(image.dtype), scale)


class RoCLIPMethod(WrappedCLIP):
    """Wraps a CLIP method: CLIP loss, or on matching batches the pool-matched loss; the pool is pushed in
    :meth:`update_state`. Its state dict is the CLIP's."""

    name = "roclip"
    ddp_find_unused_parameters = True  # matching epochs: the text tower takes no part in the loss

    def __init__(self, clip: Method, pool: TextPool) -> None:
        super().__init__(clip)
        self.pool = pool

    def loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float], dict[str, Any]]:
        img, txt, scale = self.model(batch.get("images_aug", batch["images"]), batch.get("tokens_aug", batch["tokens"]))
        logs = {"logit_scale": float(scale.detach())}
        if batch.get("roclip_matching"):
            return roclip_matched_loss(img, self.pool, scale), {**logs, "roclip_matching": 1.0}, {
                "texts": all_gather_nograd(txt.detach())}  # every rank pushes the global batch: one pool
        return clip_loss(img, txt, scale), {**logs, "roclip_matching": 0.0}, {}

    def update_state(self, aux: dict[str, Any]) -> None:
        if "texts" in aux:
            self.pool.push(aux["texts"])


class _FlaggedBatches:
    """The run's CLIP batches with the epoch's matching flag."""

    def __init__(self, base: PairBatches, params: RoCLIPParams) -> None:
        self.base, self.params = base, params

    def __len__(self) -> int:
        return len(self.base)

    def epoch(self, epoch: int):
        flag = self.params.matching(epoch)
        for batch in self.base.epoch(epoch):
            batch["roclip_matching"] = flag
            yield batch


@DEFENSES.register("roclip")
class RoCLIP(ClipTrainingDefense):
    """Every ``break_epoch``-th epoch, train each image against its nearest caption in a FIFO pool of past captions."""

    name = "roclip"
    Params = RoCLIPParams

    def wrap_training(self, method: Method, batches: Any, context: TrainingContext) -> tuple[Method, Any]:
        require_pair_batches(self.name, method, batches)
        p = self.params
        seed = int(context.seed)
        pool = TextPool(p.pool_size, method.params.embed_dim, seed).to(batches.device)
        self.method = RoCLIPMethod(method, pool)
        if not p.cross_aug:
            return self.method, _FlaggedBatches(batches, p)
        if method.tokenizer is None:
            raise ConfigError("defense 'roclip' with cross_aug needs the CLIP tokenizer")
        views = batches.eda_views(method.tokenizer, method.params.context_length, seed, p.eda_alpha)
        flag = lambda e: {"roclip_matching": p.matching(e)}  # noqa: E731
        # the strong view / EDA caption replace the originals: RoCLIPMethod trains on images_aug / tokens_aug
        return self.method, AugmentedBatches(batches, views, flag=flag)

    def training_hooks(self) -> TrainingHooks:
        return TrainingHooks(epoch_start=[self.on_epoch_start], state={"roclip_pool": self.method.pool})

    def on_epoch_start(self, view: EpochView, epoch: int) -> dict[str, Any]:
        return {"roclip_matching": self.params.matching(epoch)}

    def training_summary(self) -> dict[str, Any]:
        p = self.params
        return {"roclip_pool_size": p.pool_size, "roclip_break_epoch": p.break_epoch, "roclip_cross_aug": p.cross_aug}
