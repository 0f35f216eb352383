"""MoCo v2 (Chen, Fan, Girshick, He 2020): momentum key encoder + queue of negatives, InfoNCE.

Paper defaults (ImageNet): queue K = 65,536, momentum m = 0.999, temperature 0.2, MLP head (2048 hidden, 128 out),
SGD lr 0.03·batch/256, wd 1e-4, cosine schedule, 200 epochs, "aug+" augmentation (blur p=0.5).

**Shuffling BN on one device.** MoCo's ShuffleBN shuffles the key batch across GPUs so that a query and its key
never share BatchNorm statistics (which would leak and let the model cheat). On one device we emulate it the way
the official MoCo CIFAR demo does: the batch is processed as ``bn_splits`` groups — the query encoder sees the
groups in order, the key encoder sees a random permutation of the samples split into the same number of groups —
so BN statistics are per group, like per-GPU BN, and a query and its key land in different groups.
``bn_splits = 1`` turns this off (plain BN over the whole batch).

**Several processes (torchrun).** With world size W > 1 the shuffle is MoCo's real ShuffleBN: the key inputs of
every rank are gathered, permuted by one permutation drawn on rank 0 and broadcast, each rank encodes its slice of
the shuffled global batch, and the keys are gathered back and un-shuffled. ``bn_splits`` then counts BN groups
*per process* (1 = the official per-GPU BN), so W processes with ``bn_splits = b`` compute exactly what one process
with ``bn_splits = W·b`` computes on the global batch (tested). The queue enqueues the keys of every rank, in rank
order, so every rank holds the same queue.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..models.heads import mlp_head
from ..utils.dist import all_gather_nograd, broadcast_tensor, rank, world_size
from .base import METHODS, Method, MethodParams, check_positive


def moco_infonce_loss(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE with one positive key per query and the queue (D,K) as negatives; inputs need not be normalised."""
    q = F.normalize(q.float(), dim=1)
    k = F.normalize(k.float(), dim=1)
    l_pos = (q * k).sum(1, keepdim=True)
    l_neg = q @ queue.float()
    logits = torch.cat([l_pos, l_neg], 1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


def _grouped_forward(net: nn.Module, x: torch.Tensor, groups: int, perm: torch.Tensor | None = None) -> torch.Tensor:
    if groups <= 1:
        return net(x)
    if perm is None:
        return torch.cat([net(c) for c in x.chunk(groups)], 0)
    out = torch.cat([net(c) for c in x[perm].chunk(groups)], 0)
    return out[torch.argsort(perm)]


@dataclass
class MoCoV2Params(MethodParams):
    temperature: float = 0.2
    queue_size: int = 65536
    momentum: float = 0.999
    proj_hidden_dim: int = 2048
    proj_dim: int = 128
    symmetric: bool = False
    bn_splits: int = 8

    def __post_init__(self) -> None:
        check_positive(self, "temperature", "queue_size", "proj_dim", "proj_hidden_dim", "bn_splits")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"method.params.momentum={self.momentum} must be in [0, 1)")


@METHODS.register("mocov2")
class MoCoV2(Method):
    name = "mocov2"
    Params = MoCoV2Params

    def __init__(self, backbone: nn.Module, params: MoCoV2Params = MoCoV2Params()) -> None:
        super().__init__()
        self.params = params
        d = backbone.feature_dim
        self.backbone = backbone
        self.projector = mlp_head(d, params.proj_hidden_dim, params.proj_dim, 2)
        self.key_backbone = copy.deepcopy(backbone)
        self.key_projector = copy.deepcopy(self.projector)
        for p in list(self.key_backbone.parameters()) + list(self.key_projector.parameters()):
            p.requires_grad_(False)
        self.register_buffer("queue", F.normalize(torch.randn(params.proj_dim, params.queue_size), dim=0))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    @property
    def encoder(self) -> nn.Module:
        return self.backbone

    def trainable_modules(self) -> list[nn.Module]:
        return [self.backbone, self.projector]

    def _query(self, x: torch.Tensor) -> torch.Tensor:
        return _grouped_forward(lambda v: self.projector(self.backbone(v)), x, self.params.bn_splits)

    def _key(self, x: torch.Tensor, grad: bool = False) -> torch.Tensor:
        """Keys of ``x`` (no gradient, shuffled BN groups); ``grad``: the gradient flows back to ``x`` and the
        groups are not shuffled (Contrastive Poisoning's dual-branch noise step, official ``--allow_mmt_grad``)."""
        fn = lambda v: self.key_projector(self.key_backbone(v))  # noqa: E731
        if grad:
            return _grouped_forward(fn, x, self.params.bn_splits)
        with torch.no_grad():
            if world_size() > 1:
                return self._shuffled_keys_distributed(fn, x)
            perm = torch.randperm(x.shape[0], device=x.device)
            return _grouped_forward(fn, x, self.params.bn_splits, perm)

    @torch.no_grad()
    def _shuffled_keys_distributed(self, fn: Any, x: torch.Tensor) -> torch.Tensor:
        """ShuffleBN across ranks: this rank's keys, encoded in a slice of the shuffled global batch."""
        n, r = x.shape[0], rank()
        x_all = all_gather_nograd(x)
        perm = torch.randperm(len(x_all), device=x.device) if r == 0 else torch.empty(len(x_all), dtype=torch.long, device=x.device)
        perm = broadcast_tensor(perm, 0)
        fmt = torch.channels_last if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(
            memory_format=torch.channels_last) else torch.contiguous_format
        k_all = all_gather_nograd(_grouped_forward(fn, x_all[perm[r * n:(r + 1) * n]].contiguous(memory_format=fmt),
                                                   self.params.bn_splits))
        return k_all[torch.argsort(perm)[r * n:(r + 1) * n]]

    @torch.no_grad()
    def _enqueue(self, k: torch.Tensor) -> None:
        k = F.normalize(k.float(), dim=1)
        n, size = k.shape[0], self.queue.shape[1]
        ptr = int(self.queue_ptr)
        idx = (torch.arange(n, device=k.device) + ptr) % size
        self.queue[:, idx] = k.t().to(self.queue.dtype)
        self.queue_ptr.fill_((ptr + n) % size)

    def loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float], dict[str, Any]]:
        """InfoNCE against the queue as it was before this batch; the batch's keys go to ``aux["keys"]`` and are
        enqueued by :meth:`update_state` after the optimiser step (the official code enqueues after computing the
        loss and before the step; the queue is a constant of the loss, so the gradients are the same).
        ``batch["key_grad"]`` (optional): keys with gradient w.r.t. the views (Contrastive Poisoning's dual branch)."""
        v1, v2 = batch["views"]
        key_grad = bool(batch.get("key_grad", False))
        q1 = self._query(v1)
        k2 = self._key(v2, key_grad)
        loss = moco_infonce_loss(q1, k2, self.queue.clone().detach(), self.params.temperature)
        keys = [k2]
        if self.params.symmetric:
            q2 = self._query(v2)
            k1 = self._key(v1, key_grad)
            loss = 0.5 * (loss + moco_infonce_loss(q2, k1, self.queue.clone().detach(), self.params.temperature))
            keys.append(k1)
        if world_size() > 1:  # every rank enqueues the keys of every rank (in rank order): one queue everywhere
            keys = [all_gather_nograd(k.detach()) for k in keys]
        return loss, {}, {"keys": keys}

    def update_state(self, aux: dict[str, Any]) -> None:
        for k in aux.get("keys", ()):
            self._enqueue(k)

    @torch.no_grad()
    def after_optimizer_step(self, progress: float) -> None:
        m = self.params.momentum
        for online, target in ((self.backbone, self.key_backbone), (self.projector, self.key_projector)):
            for po, pt in zip(online.parameters(), target.parameters()):
                pt.mul_(m).add_(po.detach(), alpha=1 - m)
