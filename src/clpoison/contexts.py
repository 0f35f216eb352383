"""The typed contexts the pipeline hands its components: one frozen dataclass per seam, in one low module that
every layer may import (it imports nothing of clpoison).

==========================  ====================================================  ================================
context                     received by                                           built by
==========================  ====================================================  ================================
:class:`PoisonContext`      :meth:`Attack.poison <clpoison.attacks.base.Attack>`  the runner, ``clpoison poison``
:class:`FilterContext`      :meth:`Defense.filter <clpoison.defenses.base>`       the runner
:class:`TrainingContext`    :meth:`Defense.wrap_training`                         the runner
:class:`EpochView`          epoch hooks (``TrainingHooks.epoch_start/_end``)      the engine, per hook call
:class:`EvalContext`        :meth:`Attack.evaluate`                               the task (``Task.context``)
==========================  ====================================================  ================================

Every field has a default, so a test or a script builds only what its component reads, e.g.
``Jpeg(params).filter(ds, FilterContext(seed=3))``. The contexts are frozen: a component reads them and never
writes back (change one with :func:`dataclasses.replace`).

``MODALITIES`` are the kinds of data a method trains on; a method, attack or defense states its own in a class
attribute ``modality`` (``ANY`` for one that fits both), which config validation checks before any data is read.

    >>> ctx = PoisonContext(progress=True)
    >>> ctx.work_dir is None and ctx.progress
    True
    >>> FilterContext(seed=1).seed = 2
    Traceback (most recent call last):
    dataclasses.FrozenInstanceError: cannot assign to field 'seed'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

__all__ = ["MODALITIES", "ANY", "PoisonContext", "FilterContext", "TrainingContext", "EpochView", "EvalContext"]

MODALITIES = ("image", "image-text")  # image SSL (SimCLR, MoCo v2, BYOL) | image–caption pairs (CLIP)
ANY = "any"  # a component that fits either modality (``none``)


def _quiet(*_: Any) -> None:
    return None


@dataclass(frozen=True)
class PoisonContext:
    """What :meth:`Attack.poison` gets besides the clean splits and the seed."""

    device: Any = None  # torch.device to craft on (None: the CPU)
    work_dir: Optional[Path] = None  # where a long crafting checkpoints and resumes (None: no checkpoints)
    run_dir: Optional[Path] = None  # the run's working folder; None outside `clpoison run` (e.g. an export)
    echo: Callable[[str], None] = _quiet  # progress lines for the user
    progress: bool = False  # show progress bars


@dataclass(frozen=True)
class FilterContext:
    """What :meth:`Defense.filter` gets besides the (possibly poisoned) training split."""

    manifest: Optional[Mapping[str, Any]] = None  # the attack's manifest (None: no attack)
    seed: int = 0  # the run's seed
    device: Any = None  # the training device (``defense.params.device: auto`` follows it)


@dataclass(frozen=True)
class TrainingContext:
    """What :meth:`Defense.wrap_training` gets besides the method and the batch source."""

    train_set: Any = None  # the split trained on (after ``filter``)
    manifest: Optional[Mapping[str, Any]] = None
    seed: int = 0
    device: Any = None
    out_dir: Optional[Path] = None  # the run's working folder (None outside a run): where a defense writes files
    model: Mapping[str, Any] = field(default_factory=dict)  # the run's ``model`` section (architecture)
    # (checkpoint dict, what) -> the trained method it holds, on the device; ``what`` names it in errors
    load_method: Optional[Callable[[Mapping[str, Any], str], Any]] = None


@dataclass(frozen=True)
class EpochView:
    """What an epoch hook ``hook(view, epoch) -> dict | None`` sees of the training (never the trainer itself):
    read-only numbers and records, and two output channels."""

    epoch: int = 0  # the hook's epoch argument: start hooks the epoch about to run (0-based), end hooks epochs done
    epochs: int = 0  # epochs of the whole run
    step: int = 0  # optimiser steps done
    total_steps: int = 0  # optimiser steps of the whole run
    history: tuple[Mapping[str, Any], ...] = ()  # the records of the epochs done (a resumed run's included)
    record: Mapping[str, Any] = field(default_factory=dict)  # end hooks: this epoch's record so far (loss, ...)
    amp_dtype: Any = None  # the autocast dtype of the training step (None: full precision)
    notify: Callable[[str], None] = _quiet  # one line to the user (stderr, rank 0)
    log: Callable[[dict], None] = _quiet  # append a record to the run's log (metrics.jsonl)


@dataclass(frozen=True)
class EvalContext:
    """What :meth:`Attack.evaluate` gets after pretraining (built by ``eval/encoder_eval.py::attack_context``).

    ``classify(images_uint8) -> LongTensor``: the downstream classifier (linear probe on frozen features for image
    SSL, zero-shot for CLIP), used for CA and ASR so both come from one classifier; ``embed(images_uint8) ->
    FloatTensor``: L2-normalised encoder features. ``None`` where the task has none."""

    splits: Any = None  # the clean splits (test = what the attack is evaluated on)
    classify: Optional[Callable[[Any], Any]] = None
    embed: Optional[Callable[[Any], Any]] = None
    encoder: Any = None  # the trained image encoder
    poisoned: Any = None  # the splits trained on, before any defense (None when unknown: ``clpoison evaluate``)
    device: Any = None
    settings: Any = None  # the evaluation settings (the config's ``eval``: batch_size, linear, linear_l2, ...)
    knn: Any = None  # the kNN classifier fitted on the clean labelled split (image SSL)
    transform: Any = None  # the test-time transform the features were taken with
    test_features: Any = None  # the encoder's features of ``splits.test`` (already computed)
