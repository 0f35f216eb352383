"""Poisoning and backdoor attacks, registered by name in :data:`ATTACKS`: one module per attack, grouped in packages
by paper (``carlini/``, ``corruptencoder/``, ``cp/``, ``nlb/``); what several attacks share sits here at the root
(``base``, ``budget``, ``pair_poison`` for the CLIP attacks, ``ssl_backdoor_base`` for the image backdoors)."""

from .base import ATTACKS, Attack, AttackParams, PoisonResult
from .carlini import carlini_backdoor, carlini_targeted  # noqa: F401  (registers carlini-backdoor, carlini-targeted)
from .carlini import carlini_control  # noqa: F401  (registers carlini-control, the clean-data control)
from .corruptencoder import corruptencoder, poisoned_encoder, ssl_backdoor  # noqa: F401  (corruptencoder[-plus], poisoned-encoder, ssl-backdoor)
from .cp import contrastive_poisoning, random_noise  # noqa: F401  (cp-sample, cp-class, random-noise)
from . import ctrl  # noqa: F401  (ctrl: the CTRL clean-label backdoor)
from .nlb import nlb  # noqa: F401  (nlb: No-Label Backdoors)
from . import precomputed  # noqa: F401  (precomputed: train on a poison exported earlier)

__all__ = ["ATTACKS", "Attack", "AttackParams", "PoisonResult"]
