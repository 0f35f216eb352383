"""What the training engine needs from a contrastive method.

A method is an ``nn.Module`` that owns its networks (backbone, heads, momentum copies, queues) and defines

* ``modality`` — the kind of data it trains on (``image`` for SimCLR/MoCo v2/BYOL, ``image-text`` for CLIP); the
  experiment layer picks the matching *task* (data, batches, evaluation) from it;
* ``loss(batch) -> (loss, logs, aux)`` — the loss on one batch (a dict prepared by the batch source). It is
  **pure**: it changes no state of the method (queues, memory banks, EMA targets), so it can be called for
  gradients alone (e.g. a poisoning attack's noise step) without disturbing training. What the step would change
  travels in ``aux``. (A train-mode forward still updates BatchNorm running statistics, as every PyTorch module
  does; a caller that must not touch them runs the method in eval mode.)
* ``update_state(aux)`` — applies ``aux`` after the optimiser step (MoCo's queue enqueue, a memory-bank push);
* ``after_optimizer_step(progress)`` — momentum/EMA updates, called with training progress in [0, 1];
* ``training_step(batch) -> (loss, logs)`` — ``loss`` followed by ``update_state`` (for callers without an
  optimiser step in between);
* ``encoder`` — the network whose features are evaluated (kNN, linear probe, zero-shot);
* ``param_groups(weight_decay)`` — parameter groups (no weight decay on norms and biases when asked);
* ``Params`` — a dataclass of the method's hyper-parameters (validated from config);
* ``from_state_dict(backbone, params, state)`` — rebuild a trained method (CLIP restores its tokenizer first).

Everything with state (queues, EMA targets) is a parameter or buffer, so ``state_dict`` checkpoints it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..params import Params, check_positive
from ..registry import Registry

METHODS: Registry[type] = Registry("method")

__all__ = ["METHODS", "Method", "MethodParams", "check_positive"]


@dataclass
class MethodParams(Params):
    """Base of per-method hyper-parameters; subclasses add fields with paper defaults."""

    section = "method.params"


class Method(nn.Module):
    name: ClassVar[str] = "method"
    modality: ClassVar[str] = "image"
    Params: ClassVar[type] = MethodParams

    def loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float], dict[str, Any]]:
        """``(loss, logs, aux)`` with no side effect on the method's state; ``aux`` goes to :meth:`update_state`."""
        raise NotImplementedError

    def update_state(self, aux: dict[str, Any]) -> None:
        """Apply the state change ``loss`` computed (called after the optimiser step); nothing by default."""

    def training_step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        loss, logs, aux = self.loss(batch)
        self.update_state(aux)
        return loss, logs

    def after_optimizer_step(self, progress: float) -> None:
        """Called after every optimiser step; ``progress`` = step / total steps."""

    @property
    def encoder(self) -> nn.Module:
        raise NotImplementedError

    @classmethod
    def from_state_dict(cls, backbone: nn.Module, params: MethodParams, state: dict) -> "Method":
        """Rebuild a trained method from its ``state_dict``."""
        m = cls(backbone, params)
        m.load_state_dict(state)
        return m

    def trainable_modules(self) -> list[nn.Module]:
        return [self]

    def param_groups(self, weight_decay: float, exclude_norm_bias: bool = True) -> list[dict]:
        decay, no_decay = [], []
        seen = set()
        for mod in self.trainable_modules():
            for name, p in mod.named_parameters():
                if not p.requires_grad or id(p) in seen:
                    continue
                seen.add(id(p))
                (no_decay if exclude_norm_bias and (p.ndim <= 1) else decay).append(p)
        groups = [{"params": decay, "weight_decay": weight_decay}]
        if no_decay:
            groups.append({"params": no_decay, "weight_decay": 0.0, "lars_exclude": True})
        return groups
