"""The attack interface.

An attack takes the clean dataset and returns a poisoned training split plus a manifest (what was done, to which
samples, with which parameters and seed). It never modifies its input. After pretraining it may add its own
metrics (e.g. ASR) through :meth:`Attack.evaluate`, using the shared definitions in :mod:`clpoison.eval`.

Attacks are registered in :data:`ATTACKS` by name, so configs name them (``attack.name``); ``none`` is the
identity. Each attack lives in its own module with a docstring citing its paper and the paper's defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

from ..contexts import ANY, EvalContext, PoisonContext
from ..params import Params
from ..registry import Registry

ATTACKS: Registry[type] = Registry("attack")


@dataclass
class AttackParams(Params):
    """Base of attack parameters (unknown keys rejected by ``from_dict``)."""

    section = "attack.params"


@dataclass
class PoisonResult:
    splits: Any  # the poisoned dataset (same type as the input)
    manifest: Optional[dict] = None
    artifacts: dict[str, bytes] = field(default_factory=dict)  # extra files (name -> bytes), e.g. a crafted noise


class Attack:
    name: ClassVar[str] = "attack"
    modality: ClassVar[str] = "image"  # what it poisons: image (ImageSplits) | image-text (CaptionSplits) | any
    # poisons streamed caption shards (through the pair-source protocol, data/captions/pair_source.py)
    streams: ClassVar[bool] = False
    Params: ClassVar[type] = AttackParams

    def __init__(self, params: AttackParams) -> None:
        self.params = params

    def poison(self, splits: Any, seed: int, context: Optional[PoisonContext] = None) -> PoisonResult:
        """The poisoned copy of ``splits``. ``context`` (:class:`~clpoison.contexts.PoisonContext`, optional):
        ``device`` to craft on, ``work_dir`` where a long crafting may checkpoint and resume, ``run_dir``, ``echo``
        for progress lines, ``progress``."""
        raise NotImplementedError

    def evaluate(self, context: EvalContext) -> dict[str, Any]:
        """Attack-specific metrics after pretraining (:class:`~clpoison.contexts.EvalContext`: the clean splits, the
        downstream classifier, the embedder, the encoder, ...)."""
        return {}

    def restore(self, manifest: dict) -> None:
        """Take back what :meth:`poison` decided and :meth:`evaluate` needs (e.g. NLB's anchor label) from the
        manifest of a poison made earlier (``attack.name: precomputed``); most attacks rebuild it from params."""


@ATTACKS.register("none")
class NoAttack(Attack):
    """No poisoning: the clean dataset, no manifest."""

    name = "none"
    modality = ANY
    streams = True

    def poison(self, splits: Any, seed: int, context: Optional[PoisonContext] = None) -> PoisonResult:
        return PoisonResult(splits, None)
