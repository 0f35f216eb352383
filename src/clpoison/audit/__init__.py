"""Auditing a trained encoder handed to you: is it backdoored? DECREE trigger inversion (:mod:`.decree`), the
encoder under inspection (:mod:`.suspect`) and the pictures of an inverted trigger (:mod:`.pictures`)."""

from .decree import DecreeParams, DecreeResult, invert_trigger
from .suspect import Suspect

__all__ = ["DecreeParams", "DecreeResult", "Suspect", "invert_trigger"]
