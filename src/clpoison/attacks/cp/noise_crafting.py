"""Min–min noise crafting for Contrastive Poisoning (He, Zha, Katabi, ICLR 2023; official
``main.py::train_contrastive_poisoning``, ``model.py::AttackModel``; ``algorithms.md`` §4.3–4.4, §4.7).

The noise δ is stored in [−1, 1]; the poisoned image is ``clamp(x + ε·δ, 0, 1)`` with ``x`` in [0, 1]. Crafting
alternates, once per *round*:

1. **model phase** — ``model_steps`` optimiser steps of the attacker's contrastive method on poisoned, augmented
   batches (δ fixed). This is the one engine (:class:`~clpoison.engine.trainer.Trainer`): a round is one of its
   epochs, the batch source :class:`PoisonedViews` continues one shuffled stream across rounds (the official
   iterator persists), and the LR follows the engine's cosine over the rounds;
2. **noise phase** — the engine's ``epoch_end`` hook :func:`noise_phase`: the method in eval mode (BN on running
   statistics), for ``noise_steps`` batches of a fresh shuffled pass, ``pgd_steps`` times
   ``δ ← clamp(δ − step_size · sign(∇_δ L), −1, 1)`` — sign-PGD *descent* of the same contrastive loss, through the
   differentiable device-side augmentation, with the gradient taken w.r.t. δ only (the method's pure ``loss``).

δ (a :class:`PoisonNoise` module) is checkpointed with the model through the trainer's ``state``, so an
interrupted crafting resumes exactly. Sample-wise (CP-S) δ has one row per image; class-wise (CP-C) one per class,
its gradient summed over the batch's images of that class.

**State during the noise phase** (§4.7): the official code's forward passes in the noise phase also run MoCo's
momentum update + enqueue and BYOL's EMA update. ``noise_updates_state=True`` (default) keeps that behaviour by
applying the method's ``update_state`` and ``after_optimizer_step`` after every noise step; ``False`` leaves queue
and EMA untouched (the "clean" variant). **Dual branch** (official ``--allow_mmt_grad``): with ``dual_branch`` the
δ-gradient also flows through MoCo's key branch (no detach, no shuffled BN); it changes nothing for BYOL, whose
target is detached in the loss (as in the official code) nor for SimCLR, whose two branches are one network.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
from torch import nn

from ...contexts import EpochView
from ...data.augment import TwoViewAugment
from ...data.loader import epoch_permutation
from ...engine.trainer import TrainConfig, Trainer, min_conv_channels
from ...errors import ConfigError
from ...methods.base import Method
from ...utils.seed import get_rng_state
from .craft_diagnostic import CraftGate, CraftingNotBootstrapping, CraftTrace, check_gates, clean_loss
from ...engine.surrogate import resumable_dir


class PoisonNoise(nn.Module):
    """δ ∈ [−1, 1]: one row per image (sample-wise) or per class (class-wise); the pixel noise is ε·δ."""

    def __init__(self, rows: int, shape: tuple[int, int, int], epsilon: float, labels: Optional[torch.Tensor] = None,
                 generator: Optional[torch.Generator] = None) -> None:
        super().__init__()
        self.epsilon = float(epsilon)
        self.classwise = labels is not None
        self.register_buffer("delta", torch.rand((rows, *shape), generator=generator) * 2 - 1)  # U[−1, 1]
        self.register_buffer("labels", labels.long().clone() if labels is not None else torch.zeros(0, dtype=torch.long))

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        return self.labels[idx] if self.classwise else idx

    def poison(self, x: torch.Tensor, idx: torch.Tensor, delta: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Poisoned float images ``clamp(x + ε·δ[rows], 0, 1)`` (``delta``: a stand-in for ``self.delta``, e.g.
        one that requires grad)."""
        d = self.delta if delta is None else delta
        return (x + self.epsilon * d[self.rows(idx)].clamp(-1, 1)).clamp(0, 1)

    @torch.no_grad()
    def quantised(self, images: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        """The poisoned dataset as a released one would be: uint8 levels of ``clamp(x + ε·δ, 0, 1)``."""
        out = torch.empty_like(images, device="cpu")
        for s in range(0, len(images), chunk):
            idx = torch.arange(s, min(s + chunk, len(images)), device=self.delta.device)
            x = images[s:s + chunk].to(self.delta.device).float().div(255)
            out[s:s + chunk] = self.poison(x, idx).mul(255).round().to(torch.uint8).cpu()
        return out


@dataclass
class CraftSettings:
    """The crafting loop's parameters (README defaults of CP-S; CP-C: rounds 1000, 20/20 steps, pgd 1)."""

    epsilon: float = 8 / 255
    rounds: int = 200
    model_steps: int = 1000  # capped at the batches in one pass over the data
    noise_steps: int = 1000  # likewise
    pgd_steps: int = 5
    step_size: float = 0.1  # in units of ε: 0.1 → 0.1·ε per sign step
    batch_size: int = 512
    dual_branch: bool = False
    noise_updates_state: bool = True  # official: the noise phase's forwards also move MoCo's queue / BYOL's EMA


class PoisonedViews:
    """Model-phase batch source: ``steps`` batches per round of two augmented views of poisoned images, drawn from
    one seeded shuffled stream that continues across rounds (batch ``k`` of the stream is position ``k mod B`` of
    pass ``k div B``, ``B`` = batches per pass), so a resumed crafting sees the same batches."""

    def __init__(self, images: torch.Tensor, noise: PoisonNoise, augment: TwoViewAugment, batch_size: int, steps: int,
                 seed: int, memory_format: torch.memory_format = torch.contiguous_format) -> None:
        self.images, self.noise, self.augment = images, noise, augment
        self.n, self.batch_size, self.seed, self.memory_format = len(images), batch_size, int(seed), memory_format
        self.per_pass = self.n // batch_size
        if self.per_pass < 1:
            raise ConfigError(f"attack.params.batch_size={batch_size} is larger than the {self.n} training images")
        self.steps = min(steps, self.per_pass)
        self._pass: tuple[int, Optional[torch.Tensor]] = (-1, None)  # (pass, its permutation on the device)

    def __len__(self) -> int:
        return self.steps

    def permutation(self, p: int) -> torch.Tensor:
        """The shuffled order of pass ``p`` (drawn once per pass)."""
        if self._pass[0] != p:
            self._pass = (p, epoch_permutation(self.n, self.seed, p).to(self.images.device))
        return self._pass[1]

    def indices(self, k: int) -> torch.Tensor:
        p, pos = divmod(k, self.per_pass)
        return self.permutation(p)[pos * self.batch_size:(pos + 1) * self.batch_size]

    def views(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v1, v2 = self.augment(x)
        return v1.contiguous(memory_format=self.memory_format), v2.contiguous(memory_format=self.memory_format)

    def epoch(self, epoch: int) -> Iterator[dict[str, Any]]:
        for k in range(epoch * self.steps, (epoch + 1) * self.steps):
            idx = self.indices(k)
            with torch.no_grad():
                x = self.noise.poison(self.images[idx].float().div(255), idx)
            yield {"index": idx, "views": self.views(x)}


def noise_step(method: Method, noise: PoisonNoise, batches: PoisonedViews, idx: torch.Tensor, settings: CraftSettings,
               amp: Optional[torch.dtype] = None, x: Optional[torch.Tensor] = None,
               direction: Optional[torch.Tensor] = None) -> tuple[float, dict[str, Any]]:
    """One sign-PGD descent step of δ on the images ``idx`` (``x``: those images as floats in [0, 1], if the
    caller has them); returns the batch's loss before the step and the method's ``aux`` (what ``update_state``
    would apply). ``direction`` (δ's shape, integer): the step's signs ``−sign(∇δ)`` are added to its rows."""
    if x is None:
        x = batches.images[idx].float().div(255)
    rows = noise.rows(idx)
    uniq, inverse = torch.unique(rows, return_inverse=True) if noise.classwise else (idx, None)
    d = noise.delta[uniq].clone().requires_grad_(True)
    dev = x.device
    with torch.autocast(dev.type, dtype=amp or torch.float32, enabled=amp is not None):
        full = d[inverse] if inverse is not None else d
        xp = (x + noise.epsilon * full.clamp(-1, 1)).clamp(0, 1)
        loss, _, aux = method.loss({"index": idx, "views": batches.views(xp), "key_grad": settings.dual_branch})
    (g,) = torch.autograd.grad(loss.float(), [d])
    with torch.no_grad():
        step = g.sign()
        noise.delta[uniq] = (d - settings.step_size * step).clamp(-1, 1)
        if direction is not None:
            direction[uniq] -= step.to(direction.dtype)
    return float(loss.detach()), aux


def noise_phase(method: Method, view: EpochView, noise: PoisonNoise, batches: PoisonedViews, settings: CraftSettings,
                rnd: int, progress: bool = False, trace: Optional[CraftTrace] = None) -> dict[str, Any]:
    """The noise phase of round ``rnd`` (0-based): the record entries ``noise_loss_first`` / ``noise_loss_last``
    (mean batch loss at the first / last PGD step), ``noise_seconds``, ``noise_images_per_s`` (images × PGD steps
    per second), ``delta_abs_mean`` (mean |ε·δ| in pixel levels) and the shortcut diagnostic
    (:mod:`.craft_diagnostic`): ``loss_gap`` (first batch, first step: one extra forward pass on the clean images
    with the step's augmentation draws) and, with ``trace``, ``sign_consistency``."""
    from tqdm.auto import tqdm

    was = [(m, m.training) for m in method.modules()]
    method.eval()
    perm = epoch_permutation(batches.n, batches.seed, 1_000_000 + rnd).to(batches.images.device)  # a fresh pass
    steps = min(settings.noise_steps, batches.per_pass)
    acc = trace.accumulator(noise.classwise) if trace is not None else None
    first, last, gap = [], [], float("nan")
    t0 = time.perf_counter()
    try:
        for b in tqdm(range(steps), desc=f"noise {rnd + 1}", disable=not progress, leave=False, dynamic_ncols=True):
            idx = perm[b * batches.batch_size:(b + 1) * batches.batch_size]
            x = batches.images[idx].float().div(255)  # once per batch, for all its PGD steps
            for s in range(settings.pgd_steps):
                rng = get_rng_state() if b == 0 and s == 0 else None  # where the step's augmentation draws start
                loss, aux = noise_step(method, noise, batches, idx, settings, view.amp_dtype, x, acc)
                if rng is not None:  # before update_state: the same model for both losses
                    gap = loss - clean_loss(method, batches.views, x, idx, settings.dual_branch, rng, view.amp_dtype)
                if settings.noise_updates_state:
                    method.update_state(aux)
                    method.after_optimizer_step(min(1.0, view.step / view.total_steps))
                if s == 0:
                    first.append(loss)
                if s == settings.pgd_steps - 1:
                    last.append(loss)
    finally:
        for m, flag in was:
            m.train(flag)
    dt = time.perf_counter() - t0
    rec = {"noise_loss_first": sum(first) / len(first), "noise_loss_last": sum(last) / len(last),
           "noise_seconds": round(dt, 3),
           "noise_images_per_s": steps * batches.batch_size * settings.pgd_steps / max(dt, 1e-9),
           "delta_abs_mean": float(noise.delta.abs().mean()) * noise.epsilon * 255, "loss_gap": gap}
    if trace is not None:
        rec["sign_consistency"] = trace.end_round(acc)
    return rec


def craft(method: Method, noise: PoisonNoise, images: torch.Tensor, augment: TwoViewAugment, settings: CraftSettings,
          train: TrainConfig, device: torch.device, seed: int, work_dir: Optional[Path] = None,
          snapshot: Optional[dict] = None, echo: Callable[[str], None] = lambda s: None,
          progress: bool = False, gates: Sequence[CraftGate] = (), name: str = "noise") -> list[dict]:
    """Run the min–min crafting; δ ends in ``noise``. With ``work_dir`` it checkpoints every
    ``train.checkpoint_every`` rounds and resumes a crafting of the same ``snapshot`` (another one is discarded).
    ``gates`` check the loss gap at their rounds (:mod:`.craft_diagnostic`). Returns the per-round records
    (model-phase ``loss``, the noise-phase entries and the diagnostic)."""
    if work_dir is not None:
        work_dir = resumable_dir(work_dir, snapshot or {}, "craft.json")
    method, noise = method.to(device), noise.to(device)
    images = images.to(device)
    trace = CraftTrace(noise.delta)
    fmt = torch.channels_last if train.use_channels_last(device, min_conv_channels(method)) else torch.contiguous_format
    batches = PoisonedViews(images, noise, augment.to(device), settings.batch_size, settings.model_steps, seed, fmt)
    shown = {g.round for g in gates}

    def hook(view: EpochView, done: int) -> dict[str, Any]:
        rec = noise_phase(method, view, noise, batches, settings, done - 1, progress, trace)
        if done in shown or done == 1 or done == train.epochs or done % max(1, train.epochs // 10) == 0:
            sc = rec["sign_consistency"]
            echo(f"crafting round {done}/{train.epochs}: loss gap L(x+eps*delta)-L(x) {rec['loss_gap']:+.4f}, model loss "
                 f"{view.record['loss']:.4f}, noise loss {rec['noise_loss_first']:.4f} -> {rec['noise_loss_last']:.4f}, "
                 f"sign consistency {'-' if sc is None else f'{sc:.3f}'}, |eps*delta| {rec['delta_abs_mean']:.2f}/255")
        try:
            rec.update(check_gates(list(gates), done, rec["loss_gap"], name, echo))
        except CraftingNotBootstrapping:  # the stopping round stays in the log (its trace ends where the gate read it)
            view.log({"event": "epoch", **view.record, **rec, "gate_passed": 0})
            raise
        return rec

    trainer = Trainer(method, batches, train, device, work_dir, snapshot, on_epoch_end=[hook], log_name="crafting.jsonl",
                      state={"noise": noise, "trace": trace})
    return trainer.fit(resume=True)
