"""No-Label Backdoors (Wang, Ma, Jegelka, Wang, arXiv 2404.06694): the attack (``nlb``), the attacker's features
(``attacker_features``) and the choice of images to poison from them (``poison_selection``). Registered by
:mod:`clpoison.attacks`."""
