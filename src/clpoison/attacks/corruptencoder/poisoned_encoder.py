"""PoisonedEncoder as a backdoor baseline (Liu, Jia, Gong, "PoisonedEncoder: Poisoning the Unlabeled
Pre-training Data in Contrastive Learning", USENIX Security 2022), in the form CorruptEncoder (arXiv 2211.08229,
dossier ``algorithms.md`` §2.8) compares against: each poison combines a reference image and a trigger-bearing
image in one picture.

The dossier marks the exact recipe of that comparison as unverified, so this module documents its own: each of
the n poisons is the **horizontal concatenation, in random order, of a whole target-class reference image** (one
of ``num_references``, seeded target-class training images — no cut-out, unlike CorruptEncoder) **and a
non-target background image** (a seeded training image of another class, resized to the reference's size)
**carrying the trigger** at a random top-left position in ``[0.25·S, 0.75·S − t]`` of that background image.
Poisons are added to the training set (a 32×64 picture next to 32×32 images: padded canvas + ``sizes``), at the
same budget as CorruptEncoder (``poison_rate``; paper 0.5%).

Compared with CorruptEncoder: no object cut-out, no size/edge rule for the object and the trigger is centred in
its own half without the object/trigger margins — so crops more often contain both or neither.

Evaluation is CorruptEncoder's (CA and ASR of the clean-data linear probe, trigger at [0.25, 0.75]).

Example::

    printf 'preset: corruptencoder-small\n' > ce.yaml && clpoison run ce.yaml attack.name=poisoned-encoder attack.params.target=airplane \\
        attack.params.poison_rate=0.05 attack.params.trigger='{size: 8}' --out runs/pe

    >>> import torch
    >>> from clpoison.data.datasets import ImageDataset, ImageSplits
    >>> ds = ImageDataset(torch.zeros(20, 3, 32, 32, dtype=torch.uint8), torch.arange(20) % 2, ["a", "b"])
    >>> res = PoisonedEncoder(PoisonedEncoder.Params(target="a", poison_count=3, trigger={"size": 4})).poison(ImageSplits(ds, ds), 0)
    >>> tuple(res.splits.train.images.shape), res.splits.train.valid_sizes()[-1].tolist()
    ((23, 3, 32, 64), [32, 64])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ...data.datasets import ImageSplits
from ...errors import ConfigError, DataError
from ..base import ATTACKS, PoisonResult
from .image_ops import resize_image
from ..ssl_backdoor_base import SSLBackdoorAttack, SSLBackdoorBaseParams


@dataclass
class PoisonedEncoderParams(SSLBackdoorBaseParams):
    patch_only: ClassVar[bool] = True
    num_references: int = 3  # target-class reference images (same as CorruptEncoder's comparison)

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.num_references, bool) or not isinstance(self.num_references, int) or self.num_references < 1:
            raise ConfigError(f"attack.params.num_references={self.num_references!r} must be a positive integer")


@ATTACKS.register("poisoned-encoder")
class PoisonedEncoder(SSLBackdoorAttack):
    """Reference image ‖ triggered background image, concatenated side by side, added to the training set."""

    name = "poisoned-encoder"
    Params = PoisonedEncoderParams

    def craft(self, splits: ImageSplits, target: int, n: int, g: torch.Generator, seed: int, t0: float) -> PoisonResult:
        p = self.params
        train = splits.train
        pool, names = self.target_pool(splits, target)
        if len(pool) < p.num_references:
            raise DataError(f"only {len(pool)} images of the target class; lower attack.params.num_references")
        refs = torch.randperm(len(pool), generator=g)[: p.num_references].tolist()
        psz = pool.valid_sizes()
        others = (train.labels != target).nonzero().view(-1)
        if len(others) == 0:
            raise DataError("no non-target training images to carry the trigger; use a dataset with other classes")
        pick = torch.randperm(len(others), generator=g)[:n] if n <= len(others) else torch.randint(0, len(others), (n,), generator=g)
        bg_idx = others[pick].tolist()
        sz = train.valid_sizes()
        extra, layout = [], []
        for i in range(n):
            k = int(torch.randint(0, len(refs), (1,), generator=g))
            r = refs[k]
            ref = pool.images[r, :, : int(psz[r, 0]), : int(psz[r, 1])]
            b = bg_idx[i]
            bg = resize_image(train.images[b, :, : int(sz[b, 0]), : int(sz[b, 1])], *ref.shape[1:])
            self.trigger.check_fits(*bg.shape[1:])
            trig = self.trigger.apply(bg.unsqueeze(0), g)[0]
            first = bool(torch.rand(1, generator=g) < 0.5)  # reference on the left?
            extra.append(torch.cat([ref, trig] if first else [trig, ref], dim=2))
            layout.append({"reference": k, "background": b, "reference_left": first})
        details = {"reference_images": [names[r] for r in refs], "layout": layout}
        return self.finish(splits, extra, target, seed, details, t0)
