"""CorruptEncoder and CorruptEncoder+ (Zhang et al., CVPR 2024) with the image-SSL backdoors it compares against at
the same budget (``ssl_backdoor``: SSL-Backdoor, ``poisoned_encoder``: PoisonedEncoder), and their pieces: the
poisoned-image layout, reference objects and the composite's image operations. Registered by
:mod:`clpoison.attacks`."""
