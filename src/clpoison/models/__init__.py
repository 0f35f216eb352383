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


def build_backbone(arch: str, width: int = 64, stem_stride: int = 1) -> nn.Module:
    """Backbone by name; it has a ``feature_dim`` attribute and maps (B,3,H,W) → (B, feature_dim)."""
    if width < 1:
        raise ConfigError(f"model.width={width} must be a positive integer")
    if stem_stride not in (1, 2):
        raise ConfigError(f"model.stem_stride={stem_stride} must be 1 or 2")
    return BACKBONES.get(arch)(width=width, stem_stride=stem_stride)


__all__ = ["BACKBONES", "build_backbone", "ResNet", "ConvNet", "mlp_head"]
