"""Defenses against poisoning: data-level filters and training-time methods, registered in :data:`DEFENSES`."""

from .base import DEFENSES, Defense, DefenseParams
from . import localized_cropping  # noqa: F401  (registers localized-cropping)
from . import safeclip  # noqa: F401  (registers safeclip)
from . import matrix_completion  # noqa: F401  (registers matrix-completion)
from . import jpeg  # noqa: F401  (registers jpeg)
from . import grayscale  # noqa: F401  (registers grayscale)
from . import cleanclip  # noqa: F401  (registers cleanclip)
from . import roclip  # noqa: F401  (registers roclip)

__all__ = ["DEFENSES", "Defense", "DefenseParams"]
