"""Defenses against poisoning: data-level filters and training-time methods, registered in :data:`DEFENSES`."""

from .base import DEFENSES, Defense, DefenseParams

__all__ = ["DEFENSES", "Defense", "DefenseParams"]
