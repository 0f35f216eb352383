"""Defenses against poisoning: data-level filters and training-time methods, registered in :data:`DEFENSES`."""

from .base import DEFENSES, Defense, DefenseParams
from . import localized_cropping  # noqa: F401  (registers localized-cropping)
from . import safeclip  # noqa: F401  (registers safeclip)

__all__ = ["DEFENSES", "Defense", "DefenseParams"]
