"""The modality-specific steps of the pipeline, behind one interface.

:func:`~clpoison.experiments.runner.run_experiment` does the shared work (output folder, attack and defense slots,
engine, checkpoint/resume, results.json) and asks a *task* for the rest. The task is picked by the method's
``modality`` from :data:`TASKS` (:func:`task_for`): ``image`` → :class:`~clpoison.experiments.tasks.image.ImageTask`
(SimCLR, MoCo v2, BYOL), ``image-text`` → :class:`~clpoison.experiments.tasks.image_text.ImageTextTask` (CLIP).

The runner calls, in order: ``load`` → (attack, defense filter) → ``build_method`` → ``random_init_metrics`` →
``batches`` → (engine) → ``evaluate`` → ``context`` (for :meth:`Attack.evaluate`) → ``data_info`` /
``throughput``. ``method_from_checkpoint`` rebuilds a trained method for ``clpoison evaluate`` / ``scan``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Optional

import torch

from ...contexts import EvalContext
from ...data.augment import EvalTransform
from ...methods import METHODS
from ...methods.base import Method
from ...methods.build import method_from_checkpoint
from ...registry import Registry
from ..config import ExperimentConfig

TASKS: Registry[type] = Registry("task")


class Task:
    """Base of the tasks: holds the config, device, working folder (``None`` outside a run) and echo."""

    modality: ClassVar[str] = ""

    def __init__(self, cfg: ExperimentConfig, device: torch.device, work: Optional[Path] = None,
                 echo: Callable[[str], None] = lambda s: None) -> None:
        self.cfg, self.device, self.echo = cfg, device, echo
        self.work = None if work is None else Path(work)
        self.skipped: dict[str, str] = {}

    def skip(self, metric: str, reason: str) -> None:
        """Record (once) and say on stderr that ``metric`` is not measured, and why (``results.json["skipped"]``)."""
        if metric not in self.skipped:
            self.skipped[metric] = reason
            print(f"note: {metric} not measured: {reason}", file=sys.stderr, flush=True)

    def transform(self) -> EvalTransform:
        """The test-time transform of this config (resize to ``augment.out_size``, normalise), on the device."""
        a = self.cfg.augment
        return EvalTransform(a.out_size, a.mean, a.std).to(self.device)

    def method_from_checkpoint(self, ckpt: Mapping[str, Any], what: str = "checkpoint") -> Method:
        """The trained method of a checkpoint written by a run of this task, on the device."""
        return method_from_checkpoint(ckpt, what).to(self.device)

    # the steps every task provides
    def load(self) -> Any:
        raise NotImplementedError

    def build_method(self, train_set: Any) -> Method:
        raise NotImplementedError

    def random_init_metrics(self, method: Method, splits: Any) -> dict[str, float]:
        raise NotImplementedError

    def batches(self, method: Method, train_set: Any, defense: Any) -> Any:
        raise NotImplementedError

    def evaluate(self, method: Method, splits: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        raise NotImplementedError

    def context(self, method: Method, splits: Any, poisoned: Any, extras: dict) -> EvalContext:
        raise NotImplementedError

    def data_info(self, train_set: Any, splits: Any) -> dict[str, Any]:
        raise NotImplementedError

    def throughput(self, n_samples: int, seconds: float) -> dict[str, float]:
        raise NotImplementedError

    # optional steps
    def attack_metrics(self, attack_name: str, metrics: dict[str, Any]) -> None:
        """Called with the attack's metrics after :meth:`Attack.evaluate` (e.g. to file them per evaluation set)."""

    def extra_results(self) -> dict[str, Any]:
        """More top-level sections of ``results.json`` (e.g. ``eval_sets``, ``skipped``)."""
        return {"skipped": dict(self.skipped)} if self.skipped else {}


def task_for(cfg: ExperimentConfig, device: torch.device, work: Optional[Path] = None,
             echo: Callable[[str], None] = lambda s: None) -> Task:
    """The task for ``cfg.method`` (by the method class's ``modality``)."""
    modality = METHODS.get(cfg.method.name).modality
    return TASKS.get(modality)(cfg, device, work, echo)
