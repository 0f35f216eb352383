"""SSL-Backdoor — the patch backdoor on self-supervised learning of Saha, Subramanya, Pirsiavash ("Backdoor Attacks
on Self-Supervised Learning", CVPR 2022; official code UMBCvision/SSL-Backdoor ``poison-generation``; dossier
``algorithms.md`` §2.8), the baseline CorruptEncoder (arXiv 2211.08229) compares against at the same budget.

The attacker pastes one trigger (opaque; HTBA ``trigger_10``, 50 px in the original, 40 px in CorruptEncoder's
comparison) at a random top-left position in ``[0.25·S, 0.75·S − t]`` (trigger ``location: center-range``) of n
**target-class training images**. ``mode=replace`` (default; as the calibration runs) patches them in place, so
the training set keeps its size; ``mode=add`` appends the patched copies instead (the budget then counts added
images, like CorruptEncoder's), optionally resized by ``poison_scale`` first (e.g. 64-px poisons beside 32-px
clean images, so a random crop rarely holds the whole trigger, as with the paper's large ImageNet images). With
the target class kept out of pretraining (``data.exclude_classes``, the CorruptEncoder paper's setting) the
sources are the class's withheld images and only ``mode=add`` applies. The budget is the same as CorruptEncoder's (``poison_rate`` of the clean training
set; paper 0.5%); asking for more poisons than there are target-class images is an error.

Evaluation is CorruptEncoder's (:class:`~clpoison.attacks.ssl_backdoor_base.SSLBackdoorAttack`): CA and ASR of the
clean-data linear probe, trigger at [0.25, 0.75] of each non-target test image.

Example::

    printf 'preset: corruptencoder-small\n' > ce.yaml && clpoison run ce.yaml attack.name=ssl-backdoor attack.params.target=airplane \\
        attack.params.poison_rate=0.05 attack.params.trigger='{size: 8}' --out runs/sslb

    >>> import torch
    >>> from clpoison.data.datasets import ImageDataset, ImageSplits
    >>> ds = ImageDataset(torch.zeros(20, 3, 32, 32, dtype=torch.uint8), torch.arange(20) % 2, ["a", "b"])
    >>> res = SSLBackdoor(SSLBackdoor.Params(target="a", poison_count=3, trigger={"size": 4})).poison(ImageSplits(ds, ds), 0)
    >>> len(res.splits.train), len(res.manifest["poisoned_indices"])
    (20, 3)
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ...data.datasets import ImageDataset, ImageSplits
from ...errors import ConfigError
from ..base import ATTACKS, PoisonResult
from .image_ops import resize_image
from ..ssl_backdoor_base import SSLBackdoorAttack, SSLBackdoorBaseParams
from ...poisoned.manifest import build_manifest


@dataclass
class SSLBackdoorParams(SSLBackdoorBaseParams):
    mode: str = "replace"  # replace (patch target-class images in place) | add (append patched copies)
    poison_scale: float = 1.0  # mode=add: sources resized by this factor before the trigger (64-px poisons: 2)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode not in ("replace", "add"):
            raise ConfigError(f"attack.params.mode='{self.mode}' is unknown; choose replace or add")
        if not 0.0 < float(self.poison_scale) <= 16.0:
            raise ConfigError(f"attack.params.poison_scale={self.poison_scale} must lie in (0, 16] (1: native size)")
        if self.mode == "replace" and float(self.poison_scale) != 1.0:
            raise ConfigError("attack.params.poison_scale needs mode: add (patched-in-place images keep their size)")
        if self.mode == "replace" and self.target_in_pretraining is False:
            raise ConfigError("attack.params.mode=replace patches target-class training images in place, but "
                              "target_in_pretraining=false keeps that class out of pretraining; use mode: add")


@ATTACKS.register("ssl-backdoor")
class SSLBackdoor(SSLBackdoorAttack):
    """Trigger pasted at [0.25, 0.75] of n target-class training images."""

    name = "ssl-backdoor"
    Params = SSLBackdoorParams

    def craft(self, splits: ImageSplits, target: int, n: int, g: torch.Generator, seed: int, t0: float) -> PoisonResult:
        p = self.params
        train = splits.train
        if p.mode == "add":
            return self.craft_added(splits, target, n, g, seed, t0)
        cand = (train.labels == target).nonzero().view(-1)
        if n > len(cand):
            raise ConfigError(f"ssl-backdoor: {n} poisons requested but only {len(cand)} training images are of the "
                              f"target class '{train.class_names[target]}'; lower attack.params.poison_rate"
                              + ("" if len(cand) else " or use mode: add (the class is kept out of pretraining)"))
        idx = cand[torch.randperm(len(cand), generator=g)[:n]].sort().values
        sizes = None if train.sizes is None else train.sizes[idx]
        patched = self.trigger.apply(train.images[idx], g, sizes) if n else train.images[:0]
        images = train.images.clone()
        images[idx] = patched
        new_train = ImageDataset(images, train.labels.clone(), list(train.class_names),
                                 train.name + "+ssl-backdoor", None if train.sizes is None else train.sizes.clone())
        poisoned = ImageSplits(new_train, splits.test, dict(splits.source))
        secs = time.perf_counter() - t0
        manifest = build_manifest(
            attack=self.name, attack_version=self.version, params=p.to_dict(), seed=seed, source=splits,
            output=poisoned, poisoned_indices=idx.tolist(), trigger=self.trigger,
            targets={"target": train.class_names[target], "target_index": target},
            details={**self.setting(splits, target), "poison_count": n, "mode": p.mode, "source_indices": idx.tolist(),
                     "craft_seconds": round(secs, 4), "craft_images_per_s": round(n / secs, 2) if n and secs > 0 else None})
        return PoisonResult(poisoned, manifest)

    def craft_added(self, splits: ImageSplits, target: int, n: int, g: torch.Generator, seed: int,
                    t0: float) -> PoisonResult:
        """mode=add: patched copies of n target-class images (from the withheld pool when the class is kept out
        of pretraining), resized by ``poison_scale`` first, appended to the training set."""
        pool, names = self.target_pool(splits, target)
        if n > len(pool):
            raise ConfigError(f"ssl-backdoor: {n} poisons requested but only {len(pool)} images of the target class "
                              f"'{splits.train.class_names[target]}' exist; lower attack.params.poison_rate")
        pick = torch.randperm(len(pool), generator=g)[:n].sort().values.tolist()
        sz, f = pool.valid_sizes(), float(self.params.poison_scale)
        extra = []
        for i in pick:
            img = pool.images[i, :, : int(sz[i, 0]), : int(sz[i, 1])]
            img = resize_image(img, max(1, round(img.shape[1] * f)), max(1, round(img.shape[2] * f)))
            self.trigger.check_fits(*img.shape[1:])
            extra.append(self.trigger.apply(img.unsqueeze(0), g)[0])
        return self.finish(splits, extra, target, seed, {"mode": "add", "source_images": [names[i] for i in pick],
                                                         "poison_scale": f}, t0)
