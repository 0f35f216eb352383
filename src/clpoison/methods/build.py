"""Building a method from its config, and rebuilding a trained one from a checkpoint — the one place for both.

A method needs a backbone (``model: {arch, width, stem_stride}``) and its validated ``Params``; a checkpoint
written by the engine (:class:`~clpoison.engine.trainer.Trainer`) carries the run's config snapshot next to the
weights, so :func:`method_from_checkpoint` needs nothing else. Used by the experiment tasks, the CLI
(``evaluate``, ``scan``) and by attacks that load an attacker's encoder.

Example::

    >>> m = build_method("simclr", {"proj_dim": 16}, {"arch": "convnet", "width": 8})
    >>> m.name, m.params.proj_dim
    ('simclr', 16)
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

from torch import nn

from ..errors import ConfigError
from ..models import build_backbone
from .base import METHODS, Method


def backbone_from(model: Mapping[str, Any]) -> nn.Module:
    """The backbone of a ``model`` config mapping (``arch``, ``width``, ``stem_stride``; defaults as ModelConfig)."""
    return build_backbone(str(model.get("arch", "resnet18")), int(model.get("width", 64)),
                          int(model.get("stem_stride", 1)))


def build_method(name: str, params: Optional[dict], model: Mapping[str, Any], **kwargs: Any) -> Method:
    """A fresh method ``name`` with ``params`` (validated; errors name ``method.params.KEY``) on a new backbone;
    ``kwargs`` go to the constructor (CLIP: ``tokenizer``)."""
    cls, p = METHODS.params(name, params, "method.params")
    return cls(backbone_from(model), p, **kwargs)


def method_from_checkpoint(ckpt: Mapping[str, Any], what: str = "checkpoint") -> Method:
    """The trained method of a checkpoint dict (``config`` snapshot + ``model`` state dict), on the CPU."""
    try:
        cfg, state = ckpt["config"], ckpt["model"]
        name, params, model = cfg["method"]["name"], cfg["method"].get("params") or {}, cfg.get("model") or {}
    except (KeyError, TypeError):
        raise ConfigError(f"{what} holds no clpoison config and weights; pass a checkpoint written by `clpoison run`") from None
    cls, p = METHODS.params(name, params, "method.params")
    try:
        return cls.from_state_dict(backbone_from(model), p, state)
    except RuntimeError as e:  # shape / key mismatch between config and weights
        raise ConfigError(f"{what}: the weights do not fit the model its config describes ({str(e).splitlines()[0]})") from None
