"""clpoison: attacks and defenses for contrastive pretraining (SimCLR, MoCo v2, BYOL, CLIP) under data poisoning."""

from __future__ import annotations

from typing import Any

try:
    from importlib.metadata import PackageNotFoundError, version as _version

    __version__ = _version("clpoison")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__", "load_encoder", "load_run"]


def __getattr__(name: str) -> Any:
    """``clpoison.load_run`` / ``clpoison.load_encoder``, imported on first use (keeps ``import clpoison`` light)."""
    if name in ("load_run", "load_encoder"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'clpoison' has no attribute {name!r}")
