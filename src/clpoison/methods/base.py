"""What the training engine needs from a contrastive method.

A method is an ``nn.Module`` that owns its networks (backbone, heads, momentum copies, queues) and defines

* ``training_step(batch) -> (loss, logs)`` — the loss on one batch (a dict prepared by the batch transform);
* ``after_optimizer_step(progress)`` — momentum/EMA updates, called with training progress in [0, 1];
* ``encoder`` — the network whose features are evaluated (kNN, linear probe, zero-shot);
* ``param_groups(weight_decay)`` — parameter groups (no weight decay on norms and biases when asked);
* ``Params`` — a dataclass of the method's hyper-parameters (validated from config).

Everything with state (queues, EMA targets) is a parameter or buffer, so ``state_dict`` checkpoints it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import ConfigError
from ..utils.schema import from_dict
from ..registry import Registry

METHODS: Registry[type] = Registry("method")


@dataclass
class MethodParams:
    """Base of per-method hyper-parameters; subclasses add fields with paper defaults."""

    @classmethod
    def from_dict(cls, d: dict, where: str = "method.params") -> "MethodParams":
        """Unknown keys and values of the wrong type end in one ConfigError naming ``where.key``."""
        return from_dict(cls, d, f"{where}.")


class Method(nn.Module):
    name: ClassVar[str] = "method"
    Params: ClassVar[type] = MethodParams

    def training_step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def after_optimizer_step(self, progress: float) -> None:
        """Called after every optimiser step; ``progress`` = step / total steps."""

    @property
    def encoder(self) -> nn.Module:
        raise NotImplementedError

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


def check_positive(params: MethodParams, *names: str) -> None:
    for n in names:
        v = getattr(params, n)
        if not v > 0:
            raise ConfigError(f"method.params.{n}={v} must be > 0")
