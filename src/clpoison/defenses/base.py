"""The defense interface.

A defense acts at one or both of two places in the pipeline:

* **data level** — :meth:`Defense.filter` receives the (possibly poisoned) training split and returns the split
  to train on (e.g. drop suspected poisons, or purify images);
* **training time** — :meth:`Defense.view_sampler` may replace the view sampler (e.g. localized cropping), and
  :meth:`Defense.wrap_method` may replace the training method or schedule (e.g. SafeCLIP).

Defenses are registered in :data:`DEFENSES`; ``none`` does nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Optional

from ..data.views import ViewSampler
from ..methods.base import MethodParams
from ..registry import Registry

DEFENSES: Registry[type] = Registry("defense")


@dataclass
class DefenseParams(MethodParams):
    """Base of defense parameters (unknown keys rejected by ``from_dict``)."""


class Defense:
    name: ClassVar[str] = "defense"
    Params: ClassVar[type] = DefenseParams

    def __init__(self, params: DefenseParams) -> None:
        self.params = params

    def filter(self, train: Any, context: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        """Return the training split to use and diagnostics."""
        return train, {}

    def view_sampler(self, augment_cfg: Any) -> Optional[ViewSampler]:
        return None


@DEFENSES.register("none")
class NoDefense(Defense):
    """No defense."""

    name = "none"
