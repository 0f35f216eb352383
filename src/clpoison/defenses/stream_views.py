"""The augmented views of the CLIP defenses (:mod:`clpoison.defenses.clip_views`) on **streamed** caption shards.

A streamed split is never held in memory, so the EDA captions cannot be computed once per caption index when the
batch source is built, as for data in memory. Here each batch's EDA captions are computed **per batch, with the
same function** (:func:`clpoison.data.eda.eda`, one operation per caption), each from an RNG seeded by the run's
seed and a stable hash of the caption text (:func:`caption_seed`) — so a caption gets the same EDA view in every
epoch, on every process and after a resume, as in memory, whatever its position in the stream. (Deviation: two
identical captions get the same view; in memory each caption index draws its own.)

The strong image view (the run's crop box + flip, then the colour part) is computed on the device from the decoded
uint8 batch (:func:`~clpoison.defenses.clip_views.strong_view`, as in memory).

Example::

    >>> caption_seed(0, "a dog") == caption_seed(0, "a dog") != caption_seed(1, "a dog")
    True
    >>> eda_caption("a small photo of a dog on the grass", 0, 0.1) == eda_caption("a small photo of a dog on the grass", 0, 0.1)
    True
"""

from __future__ import annotations

import hashlib
import random
from typing import Any, Iterator, Optional

from ..data.eda import eda
from ..data.shard_stream import StreamingCaptionBatches
from .clip_views import stored_view, strong_photometric, strong_view, trim


def caption_seed(seed: int, text: str) -> int:
    """A 64-bit seed from the run's ``seed`` and the caption ``text`` (sha256: the same on every process and run)."""
    return int.from_bytes(hashlib.sha256(f"{int(seed)}\0{text}".encode("utf-8")).digest()[:8], "little")


def eda_caption(text: str, seed: int, alpha: float) -> str:
    """One EDA view of ``text``, deterministic in (``seed``, ``text``)."""
    return eda(text, random.Random(caption_seed(seed, text)), alpha)


class AugmentedStreamBatches:
    """The run's streamed CLIP batches plus ``images_aug`` (strong image view) and ``tokens_aug`` (EDA caption,
    tokenized with the batch source's tokenizer); same batches, same order as the wrapped source.

    ``clean_images``: ``images`` is the decoded image as stored (whole image, no flip), as
    :class:`~clpoison.defenses.clip_views.AugmentedCaptionBatches` gives CleanCLIP. ``flag(epoch)`` adds per-epoch
    entries to every batch (RoCLIP's matching flag)."""

    def __init__(self, base: StreamingCaptionBatches, seed: int, alpha: float, clean_images: bool = False,
                 flag: Optional[Any] = None) -> None:
        self.base, self.seed, self.alpha, self.flag = base, int(seed), float(alpha), flag
        self.photometric = strong_photometric(base.augment).to(base.device)
        self.clean = stored_view(base.augment).to(base.device) if clean_images else None
        self.batch_size = base.batch_size

    def __len__(self) -> int:
        return len(self.base)

    def eda_tokens(self, texts: list[str]) -> Any:
        b = self.base
        tok = b.tokenizer.encode([eda_caption(t, self.seed, self.alpha) for t in texts], b.context_length)
        return trim(tok).to(b.device, non_blocking=True)

    def epoch(self, epoch: int) -> Iterator[dict[str, Any]]:
        b = self.base
        extra = self.flag(epoch) if self.flag is not None else {}
        for batch in b.epoch(epoch, raw=True):
            raw, texts = batch.pop("images_uint8"), batch.pop("texts")
            if self.clean is not None:
                batch["images"] = self.clean(raw, None).contiguous(memory_format=b.memory_format)
            batch["images_aug"] = strong_view(b.augment, self.photometric, raw, None, b.memory_format)
            batch["tokens_aug"] = self.eda_tokens(texts)
            batch.update(extra)
            yield batch
