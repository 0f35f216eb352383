"""The clean-data control of the Carlini & Terzis attacks (``attack.name: carlini-control``).

An attack success rate means little without the same measurement on a model that never saw a poison: this
"attack" trains on the clean data, unchanged, and evaluates on it the backdoor trigger of ``backdoor`` (the
parameters of :class:`~clpoison.attacks.carlini.carlini_backdoor.CarliniBackdoor`) and the targeted victims of
``targeted`` (:class:`~clpoison.attacks.carlini.carlini_targeted.CarliniTargeted`) — the same trigger and the same victims
as the poisoned runs with those parameters and seed. One run serves both controls.

Example (config)::

    attack: {name: carlini-control, params: {backdoor: {trigger: {kind: checkerboard, size: 6}}, targeted: {}}}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from ...contexts import EvalContext, PoisonContext
from ..base import ATTACKS, Attack, AttackParams, PoisonResult
from .carlini_backdoor import CarliniBackdoor
from .carlini_targeted import CarliniTargeted


@dataclass
class CarliniControlParams(AttackParams):
    backdoor: dict = field(default_factory=dict)  # carlini-backdoor params (poison rate/count ignored: none added)
    targeted: dict = field(default_factory=dict)  # carlini-targeted params (pairs_per_target ignored: 0 pairs)


@ATTACKS.register("carlini-control")
class CarliniControl(Attack):
    """Clean training data; evaluates the backdoor trigger and the targeted victims of the given params on it."""

    name = "carlini-control"
    modality = "image-text"
    Params = CarliniControlParams

    def __init__(self, params: CarliniControlParams) -> None:
        super().__init__(params)
        self.b = CarliniBackdoor(CarliniBackdoor.Params.from_dict(
            {**params.backdoor, "poison_rate": None, "poison_count": 0}, "attack.params.backdoor"))
        self.t = CarliniTargeted(CarliniTargeted.Params.from_dict(
            {**params.targeted, "pairs_per_target": 0}, "attack.params.targeted"))

    def poison(self, splits: Any, seed: int, context: Optional[PoisonContext] = None) -> PoisonResult:
        self.b.poison(splits, seed)
        res = self.t.poison(splits, seed)  # 0 pairs: the clean data, same victims as the poisoned run
        return PoisonResult(res.splits, None)

    def evaluate(self, context: EvalContext) -> dict:
        return {**self.b.evaluate(context), **self.t.evaluate(context)}
