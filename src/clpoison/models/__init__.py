"""Backbones (CIFAR-stem ResNets, a small ConvNet) and heads, built by name from config."""

from __future__ import annotations

from torch import nn

from ..errors import ConfigError
from ..registry import Registry
from .convnet import ConvNet
from .heads import mlp_head
from .resnet import ResNet, resnet10, resnet18, resnet34, resnet50

BACKBONES: Registry = Registry("backbone")
BACKBONES.add("resnet10", resnet10)
BACKBONES.add("resnet18", resnet18)
BACKBONES.add("resnet34", resnet34)
BACKBONES.add("resnet50", resnet50)
BACKBONES.add("convnet", ConvNet)


def check_backbone(arch: str, width: int = 64, stem_stride: int = 1, where: str = "model") -> type:
    """The backbone class of ``arch``; one ConfigError naming ``where.KEY`` for an unknown name or a bad size."""
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ConfigError(f"{where}.width={width!r} must be a positive integer")
    if stem_stride not in (1, 2):
        raise ConfigError(f"{where}.stem_stride={stem_stride!r} must be 1 or 2")
    try:
        return BACKBONES.get(arch)
    except ConfigError as e:
        raise ConfigError(f"{where}.arch: {e}") from None


def build_backbone(arch: str, width: int = 64, stem_stride: int = 1) -> nn.Module:
    """Backbone by name; it has a ``feature_dim`` attribute and maps (B,3,H,W) → (B, feature_dim)."""
    return check_backbone(arch, width, stem_stride)(width=width, stem_stride=stem_stride)


__all__ = ["BACKBONES", "build_backbone", "check_backbone", "ResNet", "ConvNet", "mlp_head"]
