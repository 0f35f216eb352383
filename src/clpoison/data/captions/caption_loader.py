"""Feeding CLIP pretraining: resident images, pre-tokenized captions, device-side augmentation.

All captions are tokenized once into an int64 tensor (N_captions, context); image ``i`` owns rows
``offsets[i]:offsets[i+1]``. A batch is then index gathers only: the images of a shuffled index batch (the
foundation's per-epoch permutation, so a resumed run sees the same batches), one caption per image drawn with a
generator seeded by (seed, epoch) — several captions per image → a different one may be used each epoch — and the
token rows trimmed to the longest caption in the batch (exact: the text tower is causal and pools at ``<eot>``).

Augmentation (:class:`CaptionImageAugment`, batched on the device, one ``grid_sample``):

* ``translate`` (default; the calibration prototype's RandomCrop(32, padding=4) + flip): each image shifted by up to
  ``translate_px`` pixels in x and y, border pixels replicated instead of zero padding, flipped with p = 0.5;
* ``rrc``: RandomResizedCrop with ``augment.crop_scale`` / ``augment.crop_ratio`` (e.g. scale 0.8–1) + flip;
* ``none``: resize only.

Then normalisation with ``augment.mean`` / ``augment.std`` (the same as :class:`~clpoison.data.augment.EvalTransform`).

Example::

    >>> import torch
    >>> from clpoison.data.captions import CaptionDataset
    >>> from clpoison.data.captions.caption_loader import CaptionBatches, CaptionImageAugment
    >>> ds = CaptionDataset(torch.zeros(8, 3, 32, 32, dtype=torch.uint8), [["a"], ["b", "c"]] * 4)
    >>> tokens = torch.tensor([[2, 9, 3, 0]] * 12)
    >>> cb = CaptionBatches(ds, tokens, 4, torch.device("cpu"), augment=CaptionImageAugment(32))
    >>> b = next(iter(cb.epoch(0)))
    >>> b["images"].shape, b["tokens"].shape
    (torch.Size([4, 3, 32, 32]), torch.Size([4, 3]))
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch

from ...errors import ConfigError
from ...utils.dist import all_gather_nograd
from ..augment import CIFAR_MEAN, CIFAR_STD, crop_resize_flip
from ..loader import ResidentBatches, epoch_permutation
from .caption_dataset import CaptionDataset
from .eda import eda_views


def caption_offsets(dataset: CaptionDataset) -> torch.Tensor:
    counts = torch.tensor([len(c) for c in dataset.captions], dtype=torch.int64)
    return torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])


def flat_captions(dataset: CaptionDataset) -> list[str]:
    return [c for caps in dataset.captions for c in caps]


class CaptionImageAugment(torch.nn.Module):
    def __init__(
        self,
        out_size: int = 32,
        mode: str = "translate",
        translate_px: int = 4,
        crop_scale: Sequence[float] = (0.8, 1.0),
        crop_ratio: Sequence[float] = (3 / 4, 4 / 3),
        flip_p: float = 0.5,
        mean: Sequence[float] = CIFAR_MEAN,
        std: Sequence[float] = CIFAR_STD,
    ) -> None:
        super().__init__()
        if mode not in ("translate", "rrc", "none"):
            raise ConfigError(f"data.captions.augment='{mode}' unknown; choose translate, rrc or none")
        self.out_size, self.mode, self.translate_px, self.flip_p = out_size, mode, translate_px, flip_p
        self.crop_scale, self.crop_ratio = tuple(crop_scale), tuple(crop_ratio)
        self.register_buffer("mean", torch.tensor(tuple(mean)).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(tuple(std)).view(1, 3, 1, 1), persistent=False)

    def boxes(self, hw: torch.Tensor) -> torch.Tensor:
        """(B,4) crop boxes x0,y0,x1,y1 inside the valid (h, w) of each image (translate boxes may overhang)."""
        h, w = hw[:, 0].float(), hw[:, 1].float()
        b, dev = len(hw), hw.device
        if self.mode == "translate":
            t = self.translate_px
            dx = torch.randint(-t, t + 1, (b,), device=dev).float()
            dy = torch.randint(-t, t + 1, (b,), device=dev).float()
            return torch.stack([dx, dy, dx + w, dy + h], 1)
        if self.mode == "none":
            z = torch.zeros(b, device=dev)
            return torch.stack([z, z, w, h], 1)
        area = h * w * torch.empty(b, device=dev).uniform_(*self.crop_scale)
        logr = torch.empty(b, device=dev).uniform_(math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1]))
        r = logr.exp()
        cw = (area * r).sqrt().clamp(max=w).clamp(min=1)
        ch = (area / r).sqrt().clamp(max=h).clamp(min=1)
        x0 = torch.rand(b, device=dev) * (w - cw)
        y0 = torch.rand(b, device=dev) * (h - ch)
        return torch.stack([x0, y0, x0 + cw, y0 + ch], 1)

    def forward(self, images: torch.Tensor, sizes: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = images.float().div(255.0)
        b, _, hc, wc = x.shape
        hw = sizes if sizes is not None else torch.tensor([[hc, wc]], device=x.device).expand(b, 2)
        flip = torch.rand(b, device=x.device) < self.flip_p
        x = crop_resize_flip(x, self.boxes(hw.to(x.device)), (self.out_size, self.out_size), flip)
        return (x - self.mean) / self.std


class IndexedViews:
    """EDA token views computed once per caption row (:func:`~clpoison.data.captions.eda.eda_views`, as the official
    SafeCLIP ``src/data.py``): ``views(raw batch, k)`` gathers the rows of the batch's ``caption_index``."""

    def __init__(self, tokens: list[torch.Tensor]) -> None:
        self.tokens = tokens

    def __call__(self, batch: dict[str, Any], k: int) -> torch.Tensor:
        return self.tokens[k][batch["caption_index"]]


class CaptionBatches:
    """``{"index", "images", "tokens", "caption_index"}`` batches for :class:`~clpoison.methods.clip.CLIP` — the
    in-memory :class:`~clpoison.data.captions.pair_source.PairBatches` (segments: the rows shuffled by (seed, epoch) and
    cut into ``round(n / global batch)`` nearly equal batches, so a small subset still trains)."""

    def __init__(
        self,
        dataset: CaptionDataset,
        tokens: torch.Tensor,
        batch_size: int,
        device: torch.device,
        seed: int = 0,
        augment: Optional[CaptionImageAugment] = None,
        channels_last: bool = False,
        drop_last: bool = True,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
    ) -> None:
        self.dataset, self.offsets = dataset, caption_offsets(dataset)
        if len(tokens) != int(self.offsets[-1]):
            raise ValueError(f"{len(tokens)} token rows for {int(self.offsets[-1])} captions; tokenize flat_captions(dataset)")
        # the image side is the foundation's resident loader: images on the device, seeded per-epoch order
        self.source = ResidentBatches(dataset, batch_size, device, seed=seed, drop_last=drop_last, rank=rank,
                                      world_size=world_size, shuffle=shuffle)  # ``batch_size``: this process's share
        self.n, self.batch_size, self.device, self.seed, self.drop_last = len(dataset), batch_size, device, seed, drop_last
        self.images, self.sizes = self.source.images, self.source.sizes
        self.tokens = tokens.to(device)
        self.counts = (self.offsets[1:] - self.offsets[:-1]).to(device)
        self.starts = self.offsets[:-1].to(device)
        self.augment = (augment or CaptionImageAugment()).to(device)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.unscored = 0  # every row is scored in memory

    def __len__(self) -> int:
        return len(self.source)

    def with_tokens(self, dataset: CaptionDataset, tokens: torch.Tensor) -> "CaptionBatches":
        """The same batch source (batch, device, seed, augmentation, this process's share, order) over ``dataset``
        tokenized as ``tokens`` (CleanCLIP re-tokenizes with the loaded checkpoint's tokenizer)."""
        s = self.source
        return CaptionBatches(dataset, tokens, self.batch_size, self.device, self.seed, self.augment,
                              self.memory_format == torch.channels_last, self.drop_last, s.rank, s.world_size, s.shuffle)

    def with_tokenizer(self, tokenizer: Any, context_length: int) -> "CaptionBatches":
        """The same batch source with the captions tokenized by ``tokenizer`` (CleanCLIP: the checkpoint's)."""
        return self.with_tokens(self.dataset, tokenizer.encode(flat_captions(self.dataset), context_length))

    def eda_views(self, tokenizer: Any, context_length: int, seed: int, alpha: float, views: int = 1) -> IndexedViews:
        texts = eda_views(flat_captions(self.dataset), seed, alpha, views)
        return IndexedViews([tokenizer.encode(v, context_length).to(self.device) for v in texts])

    def caption_tokens(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.tokens[batch["caption_index"]]

    def caption_choice(self, epoch: int) -> torch.Tensor:
        """Row of ``tokens`` used for each image this epoch (deterministic in (seed, epoch))."""
        g = torch.Generator().manual_seed(int(self.seed) * 1_000_003 + int(epoch) + 7_777_777)
        u = torch.rand(self.n, generator=g).to(self.device)
        return self.starts + (u * self.counts).long().clamp(max=self.counts - 1)

    def epoch(self, epoch: int, raw: bool = False) -> Iterator[dict[str, Any]]:
        """The epoch's batches; ``raw``: each also holds ``images_uint8`` and ``sizes`` (before augmentation)."""
        choice = self.caption_choice(epoch)
        for idx, images, sizes in self.source.epoch(epoch):
            rows = choice[idx]
            tok = self.tokens[rows]
            length = int((tok != 0).sum(1).max())
            batch = {"index": idx, "caption_index": rows,
                     "images": self.augment(images, sizes).contiguous(memory_format=self.memory_format),
                     "tokens": tok[:, :length]}
            yield {**batch, "images_uint8": images, "sizes": sizes} if raw else batch

    # -- passes over chosen rows (SafeCLIP's segments and similarity pass) -------------------------------------
    @property
    def world(self) -> int:
        return self.source.world_size

    def raw(self, idx: torch.Tensor, choice: torch.Tensor) -> dict[str, Any]:
        return {"index": idx, "caption_index": choice[idx], "images_uint8": self.images[idx],
                "sizes": None if self.sizes is None else self.sizes[idx]}

    def segment_steps(self, count: int) -> int:
        return 0 if count < 2 else max(1, round(count / (self.batch_size * self.world)))

    def segment(self, epoch: int, j: int, rows: Any) -> Iterator[dict[str, Any]]:
        """Raw batches of ``rows`` (segment ``j`` of ``epoch``): shuffled by (seed, epoch, j), ``segment_steps``
        nearly equal global batches, this process's equal slice of each (a remainder < world is left out)."""
        idx = torch.as_tensor(np.asarray(rows), dtype=torch.long)
        steps = self.segment_steps(len(idx))
        if steps == 0:
            return
        choice = self.caption_choice(epoch)
        rank, world = self.source.rank, self.world
        perm = idx.to(self.device)[epoch_permutation(len(idx), self.seed, epoch * 16 + j).to(self.device)]
        for chunk in torch.tensor_split(perm, steps):
            if world > 1:
                k = len(chunk) // world
                chunk = chunk[rank * k:(rank + 1) * k]
                if k == 0:
                    continue
            yield self.raw(chunk, choice)

    def score(self, fn: Callable[[dict[str, Any]], torch.Tensor], epoch: int, batch_size: int) -> np.ndarray:
        """``fn(raw batch)`` of every row — one value, shape (B,), or several, (B, K) — as float32: each process
        scores rows ``rank, rank + world, ...``, gathered in row order, the same array on every process."""
        choice = self.caption_choice(epoch)
        rank, world = self.source.rank, self.world
        mine = torch.arange(rank, self.n, world, device=self.device)
        local = torch.cat([fn(self.raw(mine[s:s + batch_size], choice)).float().cpu()
                           for s in range(0, len(mine), batch_size)])
        if world == 1:
            return local.numpy()
        m = -(-self.n // world)
        padded = torch.zeros((m, *local.shape[1:]), dtype=local.dtype, device=self.device)
        padded[: len(local)] = local.to(self.device)
        got = all_gather_nograd(padded).cpu()
        out = torch.empty((self.n, *local.shape[1:]), dtype=local.dtype)
        for q in range(world):
            k = len(range(q, self.n, world))
            out[q::world] = got[q * m:q * m + k]
        return out.numpy()
