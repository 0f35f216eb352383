"""SafeCLIP (Yang, Gao, Mirzasoleiman, ICML 2024) split by concept: the defense (``safeclip``), its parameters and
phase plan (``safeclip_params``), loss terms and method wrapper (``safeclip_objective``, ``memory_bank``), batches
(``safeclip_batches``), learning-rate schedule (``safeclip_schedule``), GMM safe/risky split (``safeclip_split``) and
poison trace (``safeclip_trace``). Registered by :mod:`clpoison.defenses`."""
