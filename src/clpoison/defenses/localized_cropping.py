"""Localized cropping — the defense proposed with CorruptEncoder (Zhang, Liu, Jia, Gong, "Data Poisoning based
Backdoor Attacks to Contrastive Learning", CVPR 2024, arXiv 2211.08229, §"Defense"; official code
``train_moco/moco/loader_lc.py``; dossier ``algorithms.md`` §2.7).

CorruptEncoder relies on the two random crops of a poisoned image landing one on the reference object and the
other on the trigger, which sit in different halves of the picture. Localized cropping draws the second view
inside the first view's box enlarged by ``delta`` (paper: 0.2) × (box height, box width) on every side, clipped
to the image, so the two views stay spatially close and an object-view / trigger-view pair rarely occurs. The
paper reports that it lowers ASR at a cost in clean accuracy.

It replaces only the view sampler (:class:`~clpoison.data.views.LocalizedCropSampler`, also selectable as
``augment.sampler=localized``); the crop scale/ratio come from ``augment`` and every photometric augmentation is
unchanged, so it works with SimCLR, MoCo v2 and BYOL. No training images are removed.

Example::

    printf 'preset: corruptencoder-small\n' > ce.yaml && clpoison run ce.yaml defense.name=localized-cropping defense.params.delta=0.2 --out runs/lc
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from ..contexts import FilterContext
from ..data.views import LocalizedCropSampler, ViewSampler
from ..errors import ConfigError
from .base import DEFENSES, Defense, DefenseParams


@dataclass
class LocalizedCroppingParams(DefenseParams):
    delta: float = 0.2  # enlargement of view 1's box, as a fraction of its size, on every side (paper: 0.2)
    attempts: int = 10  # candidate boxes for view 2 before falling back to view 1's size (official code: 10)
    swap: bool = True  # randomly exchange the two views per image (official code swaps q and k)

    def __post_init__(self) -> None:
        if isinstance(self.delta, bool) or not isinstance(self.delta, (int, float)) or self.delta < 0:
            raise ConfigError(f"defense.params.delta={self.delta!r} must be a number >= 0 (the paper uses 0.2)")
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int) or self.attempts < 1:
            raise ConfigError(f"defense.params.attempts={self.attempts!r} must be an integer >= 1")


@DEFENSES.register("localized-cropping")
class LocalizedCropping(Defense):
    """Second view drawn inside view 1's box enlarged by ``delta`` (a training-time defense; no filtering)."""

    name = "localized-cropping"
    modality = "image"
    Params = LocalizedCroppingParams

    def view_sampler(self, augment_cfg: Any) -> Optional[ViewSampler]:
        p = self.params
        return LocalizedCropSampler(augment_cfg.crop_scale, augment_cfg.crop_ratio, delta=float(p.delta),
                                    attempts=p.attempts, swap=p.swap)

    def filter(self, train: Any, context: FilterContext) -> tuple[Any, dict[str, Any]]:
        return train, {"delta": float(self.params.delta)}
