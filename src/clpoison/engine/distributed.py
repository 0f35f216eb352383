"""What the engine does differently on several processes (torchrun / SLURM; :mod:`clpoison.utils.dist`).

* :func:`wrap_for_training` — the method's ``loss`` behind :class:`~torch.nn.parallel.DistributedDataParallel`
  (so the backward averages every parameter gradient over ranks), SyncBatchNorm first on CUDA for the methods
  that allow it (not MoCo v2, whose ShuffleBN needs per-process statistics; SyncBatchNorm does not run on a CPU).
  The loss stays the method's pure ``loss``; with one process it is returned as is.
* Buffers (BatchNorm running statistics) are not broadcast at every forward (``forward_sync_buffers=False``: training
  mode never reads them); the trainer copies rank 0's to every rank at the end of each epoch
  (:func:`~clpoison.utils.dist.sync_buffers`), so epoch hooks, evaluation and the checkpoint see one model, and a
  run resumed from rank 0's checkpoint continues exactly as the uninterrupted one.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch
from torch import nn

from ..methods.base import Method
from ..utils.dist import world_size


class LossModule(nn.Module):
    """``forward(batch) = method.loss(batch)``: the module DDP wraps (DDP hooks run on ``forward``)."""

    def __init__(self, method: Method) -> None:
        super().__init__()
        self.method = method

    def forward(self, batch: dict[str, Any]) -> Any:
        return self.method.loss(batch)


def wrap_for_training(method: Method, device: torch.device) -> tuple[Method, Callable[[dict], Any]]:
    """``(method, loss_fn)``: the method (SyncBN-converted where it applies) and the function the trainer calls."""
    if world_size() == 1:
        return method, lambda batch: method.loss(batch)  # looked up per call (a test may replace ``loss``)
    if device.type == "cuda" and getattr(method, "sync_batchnorm", True):
        method = nn.SyncBatchNorm.convert_sync_batchnorm(method)
    ddp_args = inspect.signature(nn.parallel.DistributedDataParallel).parameters
    no_buffer_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in ddp_args else {"broadcast_buffers": False}
    ddp = nn.parallel.DistributedDataParallel(
        LossModule(method),
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=bool(getattr(method, "ddp_find_unused_parameters", False)),
        **no_buffer_sync,
    )
    return method, ddp
