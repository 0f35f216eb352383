"""The defense interface.

A defense acts at one or both of two places in the pipeline:

* **data level** — :meth:`Defense.filter` receives the (possibly poisoned) training split and returns the split
  to train on (e.g. drop suspected poisons, or purify images);
* **training time** — :meth:`Defense.view_sampler` may replace the view sampler (e.g. localized cropping);
  :meth:`Defense.wrap_training` may replace the training method and/or the batch source (e.g. SafeCLIP's phases),
  and :meth:`Defense.training_hooks` may hand the engine an LR schedule and epoch hooks
  (:class:`~clpoison.engine.schedules.TrainingHooks`) — a defense never reaches into the trainer: its hooks see a
  read-only :class:`~clpoison.contexts.EpochView`. The runner
  calls, in order: ``filter`` → ``wrap_training`` → ``training_hooks`` → ``Trainer(...)`` → ``fit`` →
  ``training_summary`` (merged into ``results.json["defense"]``). The defaults change nothing, so data-level
  defenses need none of them.

Defenses are registered in :data:`DEFENSES`; ``none`` does nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Optional

from ..contexts import ANY, FilterContext, TrainingContext
from ..data.views import ViewSampler
from ..engine.schedules import TrainingHooks
from ..params import Params
from ..registry import Registry

DEFENSES: Registry[type] = Registry("defense")


@dataclass
class DefenseParams(Params):
    """Base of defense parameters (unknown keys rejected by ``from_dict``)."""

    section = "defense.params"


class Defense:
    name: ClassVar[str] = "defense"
    Params: ClassVar[type] = DefenseParams
    modality: ClassVar[str] = "image"  # the data it defends: image | image-text | any (checked against the method)
    streams: ClassVar[bool] = False  # runs on streamed caption shards (data.captions.stream: true)

    def __init__(self, params: DefenseParams) -> None:
        self.params = params

    def filter(self, train: Any, context: FilterContext) -> tuple[Any, dict[str, Any]]:
        """Return the training split to use and diagnostics (:class:`~clpoison.contexts.FilterContext`:
        ``manifest`` or None, ``seed``, ``device`` — the training device)."""
        return train, {}

    def train_pairs(self, n: int) -> int:
        """How many of the ``n`` training samples the run trains on (the dry run's plan; CleanCLIP: its split)."""
        return n

    def view_sampler(self, augment_cfg: Any) -> Optional[ViewSampler]:
        return None

    def wrap_training(self, method: Any, batches: Any, context: TrainingContext) -> tuple[Any, Any]:
        """Return the (method, batch source) to train (:class:`~clpoison.contexts.TrainingContext`: ``train_set``,
        ``manifest`` or None, ``seed``, ``device``, ``out_dir`` — the run's working folder —, the run's ``model``
        section and ``load_method``, which rebuilds the trained method of a checkpoint dict on the device)."""
        return method, batches

    def training_hooks(self) -> TrainingHooks:
        """The LR schedule (factory) and epoch hooks this defense adds to the engine; none by default."""
        return TrainingHooks()

    def training_summary(self) -> dict[str, Any]:
        """Diagnostics after training, merged into ``results.json["defense"]``."""
        return {}


class ClipTrainingDefense(Defense):
    """Base of the defenses that train the run's CLIP their own way (CleanCLIP, RoCLIP, SafeCLIP): image-text data,
    in memory or on streamed caption shards. ``method`` is the training method :meth:`wrap_training` returned (None
    before); ``info`` the diagnostics :meth:`training_summary` reports (empty unless the defense fills it)."""

    modality = "image-text"
    streams = True  # also on streamed caption shards

    def __init__(self, params: DefenseParams) -> None:
        super().__init__(params)
        self.method: Any = None
        self.info: dict[str, Any] = {}

    def training_summary(self) -> dict[str, Any]:
        return dict(self.info)


@DEFENSES.register("none")
class NoDefense(Defense):
    """No defense."""

    name = "none"
    modality = ANY
    streams = True
