"""CTRL — the frequency-domain clean-label backdoor on self-supervised learning (Li, Jia, Zhou, Wu, Li, Hu, Jin, Xu,
"An Embarrassingly Simple Backdoor Attack on Self-supervised Learning", ICCV 2023; official ``meet-cjli/CTRL``;
``neighbours.md`` §2).

The attacker adds the CTRL trigger (:class:`~clpoison.triggers.frequency.FrequencyTrigger`, as the official
``--mode frequency`` path: kornia's YUV in float, DCT per 32 × 32 window, ``magnitude`` added to coefficients
(15, 15) and (31, 31) of U and V, inverse DCT, rounded once when stored) to the **first** ``poison_rate · N``
training images of the target class, in place, labels unchanged (official: 1 % of CIFAR-10 = 10 % of the class).
The trigger survives cropping because it is spread over the whole image. One magnitude (default 100, the official
``--magnitude``) is planted and measured, as in the official code.

Evaluation is the shared one (:func:`~clpoison.attacks.ssl_backdoor_base.image_backdoor_eval`): CA and ASR of the
clean-data linear probe over the **non-target** test images with the same trigger; the kNN ASR over the clean
training bank (``asr_knn``; ``asr_knn_all`` is the official "backdoor accuracy", which counts target-class test
images too); Δcos; and the same at another frequency of equal energy (``*_mismatched``), the control that separates
a backdoor from a generic perturbation effect.

Example::

    printf 'preset: ctrl-small\\n' > ctrl.yaml && clpoison run ctrl.yaml attack.params.trigger.magnitude=200 --out runs/ctrl

    >>> import torch
    >>> from clpoison.data.datasets import ImageDataset, ImageSplits
    >>> ds = ImageDataset(torch.full((20, 3, 32, 32), 100, dtype=torch.uint8), torch.arange(20) % 2, ["a", "b"])
    >>> res = CTRL(CTRL.Params(target="b", poison_count=3)).poison(ImageSplits(ds, ds), 0)
    >>> res.manifest["poisoned_indices"], len(res.splits.train)
    ([1, 3, 5], 20)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..data.datasets import ImageDataset, ImageSplits
from ..errors import ConfigError
from .base import ATTACKS, PoisonResult
from ..poisoned.manifest import build_manifest
from .ssl_backdoor_base import SSLBackdoorAttack, SSLBackdoorBaseParams

#: The official CTRL trigger at 32 px.
CTRL_TRIGGER = {"type": "ctrl", "magnitude": 100.0, "window": 32, "frequencies": [[15, 15], [31, 31]], "channels": [1, 2],
                "color": "yuv"}


@dataclass
class CTRLParams(SSLBackdoorBaseParams):
    default_trigger: ClassVar[dict] = CTRL_TRIGGER


@ATTACKS.register("ctrl")
class CTRL(SSLBackdoorAttack):
    """The trigger added to the first ``n`` target-class training images, in place."""

    name = "ctrl"
    Params = CTRLParams
    default_rate = 0.01

    def craft(self, splits: ImageSplits, target: int, n: int, g: torch.Generator, seed: int, t0: float) -> PoisonResult:
        train = splits.train
        cand = (train.labels == target).nonzero().view(-1)
        if n > len(cand):
            raise ConfigError(f"ctrl: {n} poisons requested but only {len(cand)} training images are of the target "
                              f"class '{train.class_names[target]}'; lower attack.params.poison_rate")
        idx = cand[:n]
        images = train.images.clone()
        if n:
            images[idx] = self.trigger.apply(train.images[idx], g, None if train.sizes is None else train.sizes[idx])
        new_train = ImageDataset(images, train.labels.clone(), list(train.class_names), train.name + "+ctrl",
                                 None if train.sizes is None else train.sizes.clone())
        poisoned = ImageSplits(new_train, splits.test, dict(splits.source))
        secs = time.perf_counter() - t0
        manifest = build_manifest(
            attack=self.name, attack_version=self.version, params=self.params.to_dict(), seed=seed, source=splits,
            output=poisoned, poisoned_indices=idx.tolist(), trigger=self.trigger,
            targets={"target": train.class_names[target], "target_index": target},
            details={**self.setting(splits, target), "poison_count": n, "craft_seconds": round(secs, 4)})
        return PoisonResult(poisoned, manifest)
