"""Augmented image and caption views for the CLIP defenses that train on them (CleanCLIP, RoCLIP's cross-augmentation).

* **Strong image view**, on the device: the run's geometric augmentation (crop box + flip of the
  :class:`~clpoison.data.captions.caption_loader.CaptionImageAugment`), then SimCLR-style colour jitter (0.4, 0.4, 0.4,
  0.1) with p 0.8 and grayscale with p 0.2 (:class:`~clpoison.data.augment.ViewAugment`; Gaussian blur from 96 px up).
  The official CleanCLIP and RoCLIP code use torchvision's AutoAugment (ImageNet policy) — a deviation, named in
  docs/clip_defenses.md: AutoAugment's ops are mostly photometric too (colour, contrast, brightness, posterize,
  solarize, equalize, sharpness) plus small rotations and shears.
* **EDA caption view** (:mod:`clpoison.data.captions.eda`, one augmentation per caption): the batch source's
  ``eda_views`` — in memory computed **once** when the batch source is built, as the official ``src/data.py``; on
  streamed shards per batch, deterministic per caption text (:mod:`clpoison.data.shards.shard_batches`).

:class:`AugmentedBatches` wraps the run's batch source (any :class:`~clpoison.data.captions.pair_source.PairBatches`:
same order, same caption choice per epoch) and adds ``images_aug`` / ``tokens_aug`` to each batch.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Optional

import torch

from ..data.augment import AugmentConfig, ViewAugment, crop_resize_flip
from ..data.captions.caption_loader import CaptionImageAugment
from ..data.captions.pair_source import PairBatches, is_pair_batches
from ..errors import ConfigError


def require_pair_batches(name: str, method: Any, batches: Any) -> PairBatches:
    """The guard the CLIP defenses open with: an image-text method and CLIP batches (in memory or streamed)."""
    if getattr(method, "modality", None) != "image-text" or not is_pair_batches(batches):
        raise ConfigError(f"defense '{name}' needs an image-text method (method.name=clip)")
    return batches


def strong_photometric(augment: CaptionImageAugment) -> ViewAugment:
    """The colour part of the strong view (SimCLR's jitter + grayscale; blur only from 96 px up), normalising with
    the run's mean / std."""
    big = augment.out_size >= 96
    cfg = AugmentConfig(out_size=augment.out_size, jitter=(0.4, 0.4, 0.4, 0.1), jitter_p=0.8, gray_p=0.2,
                        blur_p=(0.5, 0.5) if big else (0.0, 0.0), mean=tuple(augment.mean.flatten().tolist()),
                        std=tuple(augment.std.flatten().tolist()))
    return ViewAugment(cfg, 0)


def strong_view(augment: CaptionImageAugment, photometric: ViewAugment, images: torch.Tensor,
                sizes: Optional[torch.Tensor], memory_format: torch.memory_format) -> torch.Tensor:
    """The strong view of uint8 ``images`` (valid ``sizes`` or the whole image): the run's crop box + flip, then
    the colour part."""
    x = images.float().div(255.0)
    n, _, hc, wc = x.shape
    hw = sizes if sizes is not None else torch.tensor([[hc, wc]], device=x.device).expand(n, 2)
    flip = torch.rand(n, device=x.device) < augment.flip_p
    x = crop_resize_flip(x, augment.boxes(hw), (augment.out_size, augment.out_size), flip)
    return photometric(x).contiguous(memory_format=memory_format)


def stored_view(augment: CaptionImageAugment) -> CaptionImageAugment:
    """The image as stored (whole image, no flip), normalised with the run's mean / std: CleanCLIP's CLIP view."""
    return CaptionImageAugment(augment.out_size, "none", flip_p=0.0, mean=augment.mean.flatten().tolist(),
                               std=augment.std.flatten().tolist())


def trim(tok: torch.Tensor) -> torch.Tensor:
    """Token rows cut to the longest caption of the batch (exact for the causal / bag-of-tokens text towers)."""
    return tok[:, : max(1, int((tok != 0).sum(1).max()))]


class AugmentedBatches:
    """The run's CLIP batches plus a strong image view (``images_aug``) and EDA caption view 0 of ``views``
    (``tokens_aug``: the batch source's ``eda_views``).

    ``clean_images``: the ``images`` entry is the image as stored (whole image, no flip; the official CleanCLIP
    data path applies only the CLIP preprocessing to it) instead of the run's augmented view. ``flag(epoch)`` adds
    per-epoch entries to every batch (RoCLIP: whether the epoch matches captions)."""

    def __init__(self, base: PairBatches, views: Callable[[dict, int], torch.Tensor], clean_images: bool = False,
                 flag: Optional[Any] = None) -> None:
        self.base, self.views, self.flag = base, views, flag
        a = base.augment
        self.photometric = strong_photometric(a).to(base.device)
        self.clean = stored_view(a).to(base.device) if clean_images else None
        self.batch_size = base.batch_size

    def __len__(self) -> int:
        return len(self.base)

    @property
    def n(self) -> int:
        return self.base.n

    def epoch(self, epoch: int) -> Iterator[dict[str, Any]]:
        b = self.base
        extra = self.flag(epoch) if self.flag is not None else {}
        for batch in b.epoch(epoch, raw=True):
            tokens_aug = trim(self.views(batch, 0))
            raw, sizes = batch.pop("images_uint8"), batch.pop("sizes")
            batch.pop("texts", None)
            if self.clean is not None:
                batch["images"] = self.clean(raw, sizes).contiguous(memory_format=b.memory_format)
            batch["images_aug"] = strong_view(b.augment, self.photometric, raw, sizes, b.memory_format)
            batch["tokens_aug"] = tokens_aug
            batch.update(extra)
            yield batch
