"""Defenses against poisoning: data-level filters and training-time methods, registered in :data:`DEFENSES`. One
module per defense; SafeCLIP (``safeclip/``) and the purification filters (``purification/``) are packages, and
``clip_views`` is what the CLIP defenses share."""

from .base import DEFENSES, Defense, DefenseParams
from . import localized_cropping  # noqa: F401  (registers localized-cropping)
from .safeclip import safeclip  # noqa: F401  (registers safeclip)
from .purification import matrix_completion  # noqa: F401  (registers matrix-completion)
from .purification import jpeg  # noqa: F401  (registers jpeg)
from .purification import grayscale  # noqa: F401  (registers grayscale)
from . import cleanclip  # noqa: F401  (registers cleanclip)
from . import roclip  # noqa: F401  (registers roclip)

__all__ = ["DEFENSES", "Defense", "DefenseParams"]
