"""Learning-rate schedules and the training hooks a defense may hand to the engine.

The :class:`~clpoison.engine.trainer.Trainer` steps a *schedule* once per optimiser step and checkpoints its
``state_dict``. By default it is linear warm-up + cosine (:func:`warmup_cosine_schedule`); a training-time
defense supplies its own through :class:`TrainingHooks` (``schedule``: a factory called with the trainer's
optimiser, steps per epoch and epochs), together with epoch hooks, which see the training through a read-only
:class:`~clpoison.contexts.EpochView` — so no defense replaces or reads the trainer's attributes. SafeCLIP's phase schedule is :class:`~clpoison.defenses.safeclip.safeclip_schedule.PhaseLR`.

Example::

    >>> import torch
    >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    >>> s = warmup_cosine_schedule(opt, steps_per_epoch=10, epochs=2, warmup_epochs=1.0)
    >>> lrs = []
    >>> for _ in range(3):
    ...     lrs.append(round(s.get_last_lr()[0], 2)); opt.step(); s.step()
    >>> lrs  # linear warm-up over the first 10 steps
    [0.1, 0.2, 0.3]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol

import torch

from ..contexts import EpochView
from .optim import warmup_cosine


class Schedule(Protocol):
    """What the engine needs of a learning-rate schedule (``torch.optim.lr_scheduler.LRScheduler`` fits)."""

    def step(self) -> None: ...

    def get_last_lr(self) -> list[float]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


# (optimizer, steps_per_epoch, epochs) -> Schedule
ScheduleFactory = Callable[[torch.optim.Optimizer, int, int], Schedule]
# (view, epoch) -> extra entries of the epoch record (or None): ``view`` is the read-only
# :class:`~clpoison.contexts.EpochView` of the training (never the trainer); start hooks get the 0-based epoch
# about to run, end hooks the number of epochs completed
EpochHook = Callable[[EpochView, int], Optional[dict]]


def warmup_cosine_schedule(optimizer: torch.optim.Optimizer, steps_per_epoch: int, epochs: int,
                           warmup_epochs: float = 0.0, min_lr_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_epochs`` (rounded to steps), then cosine to ``min_lr_ratio`` × base lr."""
    total = epochs * steps_per_epoch
    warm = int(round(warmup_epochs * steps_per_epoch))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, total, warm, min_lr_ratio))


@dataclass
class TrainingHooks:
    """What a training-time defense (or an attack's crafting loop) adds to the engine: an LR schedule (factory),
    epoch hooks, and ``state`` — named objects with ``state_dict`` / ``load_state_dict`` (e.g. a poison's noise
    tensor) that the trainer checkpoints beside the model and restores on resume."""

    schedule: Optional[ScheduleFactory] = None
    epoch_start: list[EpochHook] = field(default_factory=list)
    epoch_end: list[EpochHook] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)
