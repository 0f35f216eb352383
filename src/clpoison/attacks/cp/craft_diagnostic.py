"""The shortcut diagnostic of Contrastive Poisoning's crafting: is the noise becoming the easy feature?

CP works when the attacker's contrastive loss on poisoned inputs falls far below its loss on the clean inputs
under the *same* model and the *same* augmentation draw: ``L(x + ε·δ) ≪ L(x)``. The model and noise losses of a
round cannot show that (both are losses on poisoned inputs). Logged every round (``noise_crafting.noise_phase``):

* ``loss_gap`` = ``L(x + ε·δ) − L(x)`` in nats, on the noise phase's first batch at its first PGD step: the poisoned
  loss is the one the step computes anyway; the clean loss is one extra forward pass (eval mode, no gradient) with
  the RNG state the step's augmentation started from, so both inputs get identical crops, flips and jitter (a δ of
  zero gives a gap of exactly 0). Negative = the noise is a shortcut;
* ``sign_consistency`` = the share of δ's entries whose net signed step this round (the sum of ``−sign(∇δ)`` over
  the round's PGD steps) points the same way as in the previous round, among entries that got a step in both:
  ≈ 0.5 while each step is a coin flip (a random walk), → 1 once δ moves in a consistent direction. The previous
  round's directions (:class:`CraftTrace`, int8) are checkpointed with δ, so a resumed crafting logs the same;
* ``delta_abs_mean`` = mean ``|ε·δ|`` in grey levels (a clamped random walk from U[−1, 1] stays near ε·255/2).

A **gate** (``attack.params.gate: {round: R, max_gap: -0.1, action: abort | warn}``, or a list of them) checks the
gap at the end of round ``R``: above ``max_gap`` it stops the crafting with one line (``abort``, a
:class:`~clpoison.errors.ClpoisonError`; the checkpoint of round ``R − 1`` stays, and the gate is not part of what
must match to resume) or prints a warning and goes on (``warn``), so a user learns in minutes that the min–min is
not bootstrapping. A gate past the last round never fires.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from ...errors import ClpoisonError, ConfigError
from ...params import Params
from ...utils.seed import get_rng_state, set_rng_state

TRACE_KEYS = {"loss_gap": "loss_gap", "sign_consistency": "sign_consistency", "mean_abs_levels": "delta_abs_mean"}


@dataclass
class CraftGate(Params):
    round: int = 1
    max_gap: float = -0.1  # nats: the gap L(x+εδ) − L(x) at the end of `round` must be at most this
    action: str = "abort"  # abort | warn

    def __post_init__(self) -> None:
        if self.round < 1:
            raise ConfigError(f"attack.params.gate.round={self.round} must be >= 1")
        if self.action not in ("abort", "warn"):
            raise ConfigError(f"attack.params.gate.action='{self.action}' must be abort or warn")


def parse_gates(value: Any) -> list[CraftGate]:
    """``None``, one gate mapping or a list of them → gates (one ConfigError line on bad input). A gate past the
    crafting's last round never fires (a preset's gates survive a ``rounds=2`` smoke override)."""
    items = [] if value is None else value if isinstance(value, list) else [value]
    return [CraftGate.from_dict(g, "attack.params.gate") for g in items]


class CraftingNotBootstrapping(ClpoisonError):
    """A gate with ``action: abort`` stopped the crafting (``round``, ``gap``: what it saw)."""

    def __init__(self, message: str, round: int, gap: float) -> None:
        super().__init__(message)
        self.round, self.gap = round, gap


def check_gates(gates: list[CraftGate], done: int, gap: float, name: str, echo: Callable[[str], None]) -> dict:
    """The gates of round ``done``: abort (ClpoisonError) or warn when the gap is above ``max_gap``; returns
    ``{"gate_passed": 0/1}`` for the round's record when a gate was checked."""
    out: dict[str, Any] = {}
    for g in gates:
        if g.round != done:
            continue
        ok = gap <= g.max_gap
        out["gate_passed"] = int(ok and out.get("gate_passed", 1))
        if ok:
            continue
        msg = (f"{name} crafting is not bootstrapping: the loss gap L(x+eps*delta) - L(x) is {gap:+.4f} nats at round "
               f"{done}, above the gate's max_gap {g.max_gap:+.4f}")
        if g.action == "abort":
            raise CraftingNotBootstrapping(f"{msg}; more rounds, a larger step_size, or remove attack.params.gate to "
                                           "go on", done, gap)
        echo(f"warning: {msg} (gate action warn: crafting goes on)")
    return out


class CraftTrace(nn.Module):
    """The previous round's net step direction of every δ entry (int8 in {−1, 0, 1}), checkpointed with δ."""

    def __init__(self, delta: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("direction", torch.zeros(delta.shape, dtype=torch.int8, device=delta.device))

    def accumulator(self, classwise: bool) -> torch.Tensor:
        """Zeros to sum the round's signed steps in (``noise_step(direction=...)``)."""
        return torch.zeros(self.direction.shape, dtype=torch.int32 if classwise else torch.int16,
                           device=self.direction.device)

    @torch.no_grad()
    def end_round(self, acc: torch.Tensor) -> Optional[float]:
        """Sign consistency of this round's directions with the previous round's (None in the first round);
        entries without a step this round keep their last direction."""
        new = acc.sign().to(torch.int8)
        both = (new != 0) & (self.direction != 0)
        n = int(both.sum())
        share = float(((new == self.direction) & both).sum()) / n if n else None
        self.direction.copy_(torch.where(new != 0, new, self.direction))
        return share


def clean_loss(method: Any, views: Callable[[torch.Tensor], tuple], x: torch.Tensor, idx: torch.Tensor,
               key_grad: bool, rng: dict, amp: Optional[torch.dtype]) -> float:
    """``L(x)`` with the augmentation draws that start from the RNG state ``rng`` (the poisoned forward's), no
    gradient; the RNG streams are left as they were found."""
    after = get_rng_state()
    set_rng_state(rng)
    try:
        with torch.no_grad(), torch.autocast(x.device.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss, _, _ = method.loss({"index": idx, "views": views(x), "key_grad": key_grad})
    finally:
        set_rng_state(after)
    return float(loss.float())


def trace_from_log(path: Path) -> dict[str, list]:
    """The crafting trace read back from a crafting's ``crafting.jsonl`` (e.g. after a gate stopped it): the last
    record of every round, as :func:`trace_of` gives it."""
    rounds: dict[int, dict] = {}
    for line in Path(path).read_text().splitlines():
        rec = json.loads(line) if line.strip() else {}
        if rec.get("event") == "epoch" and "loss_gap" in rec:
            rounds[int(rec["epoch"])] = rec
    return trace_of([rounds[r] for r in sorted(rounds)])


def trace_of(history: list[dict]) -> dict[str, list]:
    """The crafting trace of a run's per-round records: ``rounds``, ``loss_gap``, ``sign_consistency``,
    ``mean_abs_levels`` (what the manifest's ``details.trace`` holds and the report plots)."""
    out: dict[str, list] = {"rounds": [int(h.get("epoch", i + 1)) for i, h in enumerate(history)]}
    for name, key in TRACE_KEYS.items():
        out[name] = [h.get(key) for h in history]
    return out
