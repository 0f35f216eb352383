"""Poisoning and backdoor attacks, one per module, registered by name in :data:`ATTACKS`."""

from .base import ATTACKS, Attack, AttackParams, PoisonResult

__all__ = ["ATTACKS", "Attack", "AttackParams", "PoisonResult"]
