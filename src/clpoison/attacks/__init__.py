"""Poisoning and backdoor attacks, one per module, registered by name in :data:`ATTACKS`."""

from .base import ATTACKS, Attack, AttackParams, PoisonResult
from . import carlini_backdoor, carlini_targeted  # noqa: F401  (registers carlini-backdoor, carlini-targeted)
from . import carlini_control  # noqa: F401  (registers carlini-control, the clean-data control)
from . import corruptencoder, poisoned_encoder, ssl_backdoor  # noqa: F401  (corruptencoder[-plus], poisoned-encoder, ssl-backdoor)
from . import contrastive_poisoning, random_noise  # noqa: F401  (cp-sample, cp-class, random-noise)
from . import ctrl, nlb  # noqa: F401  (ctrl: the CTRL clean-label backdoor; nlb: No-Label Backdoors)
from . import precomputed  # noqa: F401  (precomputed: train on a poison exported earlier)

__all__ = ["ATTACKS", "Attack", "AttackParams", "PoisonResult"]
