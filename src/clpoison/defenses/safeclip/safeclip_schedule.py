"""SafeCLIP's learning-rate schedule, one per phase (official ``src/scheduler.py`` + ``train.py``), supplied to the
engine through :class:`~clpoison.engine.schedules.TrainingHooks`; the defense's epoch hook tells it the plan.
"""

from __future__ import annotations

import math

import torch

from .safeclip_params import SafeCLIPParams


class PhaseLR:
    """The SafeCLIP LR schedule, a drop-in for the engine's scheduler (``step``, ``get_last_lr``, state dict).

    The lr of global step ``t`` depends on the epoch plan: Phase A ``in_lr`` · warm-up · cosine over the Phase A+B
    steps; Phase B ``filter_lr`` constant; Phase C ``in_lr`` (risky segment) or ``cross_lr`` (safe segment) ·
    warm-up · cosine from the first filtering epoch to the end of training. Warm-up = ``(t+1)/W`` for ``t < W``."""

    def __init__(self, optimizer: torch.optim.Optimizer, params: SafeCLIPParams, steps_per_epoch: int, epochs: int) -> None:
        self.optimizer, self.p, self.spe, self.epochs = optimizer, params, steps_per_epoch, epochs
        w = params.warmup_steps if params.warmup_epochs is None else params.warmup_epochs * steps_per_epoch
        self.warmup = max(0, int(round(w)))
        self.t = 0
        self.epoch = 0
        self.epoch_start = 0
        self.segments: list[tuple[str, int]] = []
        self.last_lr = 0.0

    def set_epoch(self, epoch: int, step: int, segments: list[tuple[str, int]]) -> None:
        self.epoch, self.t, self.epoch_start, self.segments = epoch, step, step, segments
        self.apply()

    def warm(self, t: int) -> float:
        return 1.0 if t >= self.warmup else (t + 1) / self.warmup

    def lr_at(self, t: int) -> float:
        p = self.p
        phase = p.phase(self.epoch)
        if phase == "inmodal":
            total = (p.inmodal_epochs + p.crossmodal_epochs) * self.spe
            w = min(self.warmup, total - 1)
            if t < w:
                return p.in_lr * (t + 1) / w
            return p.in_lr * 0.5 * (1 + math.cos(math.pi * min(1.0, (t - w) / max(1, total - w))))
        if phase == "crossmodal":
            return p.filter_lr
        # cosine over the filtering epochs by epoch fraction: a filtering epoch's step count follows the split
        # (risky + safe segments), so it is not steps_per_epoch
        first = p.inmodal_epochs + p.crossmodal_epochs
        offset = t - self.epoch_start
        in_epoch = max(1, sum(n for _, n in self.segments))
        frac = (self.epoch - first + min(offset, in_epoch) / in_epoch) / max(1, self.epochs - first)
        cos = 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, frac))))
        kind = "clip"
        for k, n in self.segments:
            if offset < n:
                kind = k
                break
            offset -= n
        return (p.in_lr if kind == "inmodal" else p.cross_lr) * self.warm(t) * cos

    def apply(self) -> None:
        self.last_lr = self.lr_at(self.t)
        for g in self.optimizer.param_groups:
            g["lr"] = self.last_lr

    def step(self) -> None:
        self.t += 1
        self.apply()

    def get_last_lr(self) -> list[float]:
        return [self.last_lr]

    def state_dict(self) -> dict:
        return {"t": self.t, "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.t, self.epoch = int(state.get("t", 0)), int(state.get("epoch", 0))
