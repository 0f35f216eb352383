"""Contrastive Poisoning (He, Zha, Katabi, ICLR 2023): the attack (``contrastive_poisoning``), its min–min noise
crafting (``noise_crafting``) and shortcut diagnostic (``craft_diagnostic``), and the random-noise control of the same
budget (``random_noise``). Registered by :mod:`clpoison.attacks`."""
