"""Contrastive methods, each a loss + training step on the one engine."""

from .base import METHODS, Method, MethodParams
from .byol import BYOL
from .clip import CLIP
from .pretrained_clip import HFCLIP, PretrainedCLIPMethod
from .mocov2 import MoCoV2
from .simclr import SimCLR

__all__ = ["METHODS", "Method", "MethodParams", "SimCLR", "MoCoV2", "BYOL", "CLIP", "HFCLIP", "PretrainedCLIPMethod"]
