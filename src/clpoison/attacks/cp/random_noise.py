"""Random noise of the same budget — the control every availability attack needs (``attack.name: random-noise``).

A Contrastive Poisoning result means nothing unless noise of the same ε *without* the optimisation leaves the
victim's accuracy intact (He, Zha, Katabi, ICLR 2023, compare random noise; ``algorithms.md`` §4). Each training
image gets ``clamp(x + ε·u, 0, 1)`` with ``u ~ U[−1, 1]`` per pixel (``classwise``: one pattern per class), drawn
from a generator seeded by the run's seed and quantised to uint8 like the crafted poisons.

Example::

    >>> import torch
    >>> from clpoison.data.datasets import ImageDataset, ImageSplits
    >>> ds = ImageDataset(torch.full((4, 3, 8, 8), 128, dtype=torch.uint8), torch.tensor([0, 1, 0, 1]), ["a", "b"])
    >>> out = RandomNoise(RandomNoiseParams()).poison(ImageSplits(ds, ds), seed=0).splits.train.images
    >>> int((out.int() - 128).abs().max()) <= 8 and not torch.equal(out, ds.images)
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from ...contexts import EvalContext, PoisonContext
from ...data.datasets import ImageDataset, ImageSplits
from ...errors import ConfigError
from ...eval.encoder_eval import poisoned_probe_metrics
from ..base import ATTACKS, Attack, AttackParams, PoisonResult
from ...poisoned.manifest import build_manifest
from .noise_crafting import PoisonNoise
from ..ssl_backdoor_base import require_images


@dataclass
class RandomNoiseParams(AttackParams):
    epsilon: float = 8 / 255
    classwise: bool = False  # one pattern per class instead of per image

    def __post_init__(self) -> None:
        if isinstance(self.epsilon, bool) or not 0 < self.epsilon <= 1:
            raise ConfigError(f"attack.params.epsilon={self.epsilon} must be in (0, 1]")


@ATTACKS.register("random-noise")
class RandomNoise(Attack):
    """Uniform ±ε noise on every training image (the control of Contrastive Poisoning)."""

    name = "random-noise"
    version = "1"
    modality = "image"
    Params = RandomNoiseParams

    def poison(self, splits: Any, seed: int, context: Optional[PoisonContext] = None) -> PoisonResult:
        p = self.params
        splits = require_images(splits, self.name)
        train = splits.train
        g = torch.Generator().manual_seed(int(seed))
        rows = train.num_classes if p.classwise else len(train)
        noise = PoisonNoise(rows, tuple(train.images.shape[1:]), p.epsilon, train.labels if p.classwise else None, g)
        out = ImageSplits(ImageDataset(noise.quantised(train.images), train.labels.clone(), list(train.class_names),
                                       train.name, train.sizes), splits.test, dict(splits.source))
        manifest = build_manifest(attack=self.name, attack_version=self.version, params=p.to_dict(), seed=seed,
                                  source=splits, output=out, poisoned_indices=range(len(train)))
        return PoisonResult(out, manifest)

    def evaluate(self, context: EvalContext) -> dict[str, Any]:
        """``linear_top1_poisoned_probe``, as for Contrastive Poisoning (the control's row of the same table)."""
        return poisoned_probe_metrics(context)
