"""Purification defenses: filters that rewrite every training image (``jpeg`` and ``grayscale``: Image Shortcut
Squeezing; ``matrix_completion``: ME-Net), over the shared bookkeeping of ``purify``. Registered by
:mod:`clpoison.defenses`."""
