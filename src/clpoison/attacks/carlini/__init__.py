"""Carlini & Terzis, "Poisoning and Backdooring Contrastive Learning" (ICLR 2022) on CLIP: the patch backdoor
(``carlini_backdoor``), targeted poisoning (``carlini_targeted``), their clean-data control (``carlini_control``) and
the caption set that "labels" a poison (``caption_set``). Registered by :mod:`clpoison.attacks`."""
