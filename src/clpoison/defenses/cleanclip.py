"""CleanCLIP (Bansal, Singhi, Yang, Yin, Grover, Chang, ICCV 2023): fine-tune a poisoned CLIP on clean pairs with an
added in-modal self-supervised loss, so that the spurious trigger–caption association is forgotten.

A *post-hoc* defense (``defense: {name: cleanclip, params: {checkpoint: RUN}}``): the run builds the same (poisoned)
data as the attacked run, so that the attack is evaluated exactly as there, and then

1. :meth:`CleanCLIP.filter` picks the **clean fine-tuning split** — rows of the training split that are disjoint
   from the poisoned training rows (the attack's manifest): ``finetune_split: untouched`` draws ``finetune_pairs``
   rows (seeded by the run's seed) among the rows the attack did not touch — the manifest stands in for the
   defender's trusted clean data, as the paper fine-tunes on a clean 100K subset; ``finetune_split: range`` takes the
   half-open row range ``finetune_range`` and refuses, with one line, a range that holds a poisoned row;
2. :meth:`CleanCLIP.wrap_training` loads the checkpoint's CLIP (weights and tokenizer; the run's captions are
   re-tokenized with it) and trains it with :func:`clpoison.methods.cleanclip_loss.cleanclip_loss` on batches of
   (stored image, caption, strong image view, EDA caption) — :mod:`clpoison.defenses.clip_views`, EDA computed once.

The engine (:class:`~clpoison.engine.trainer.Trainer`) runs the fine-tuning with the run's ``train`` section: the
official recipe is AdamW (0.9, 0.999), lr 1e-5, weight decay 0.1 (not on norms / biases / the logit scale), batch 64,
10 epochs, 50 warm-up steps then cosine (``cleanclip-paper``). The optimiser is **fresh**: the official
``--complete_finetune`` still loads the poisoned run's optimiser state (AdamW moments of the poisoned training);
starting from the weights alone is the defender's situation when only a model is at hand (docs/clip_defenses.md).

Written once for data in memory and streamed caption shards (:class:`~clpoison.data.captions.pair_source.PairSource` /
``PairBatches``): on a stream the split is the first ``finetune_pairs`` samples of a seeded choice of whole clean
shards (:func:`clpoison.data.shards.shard_edits.clean_shard_subset`; a ``data.path`` that lists a poison shard of the
poisoned run — the ``stream`` section of its manifest — is refused, and so is ``finetune_split: range``), the
batches are tokenized with the checkpoint's tokenizer as they stream and the EDA captions computed per batch,
deterministic per caption (:mod:`clpoison.data.shards.shard_batches`).

Under torchrun every process loads the checkpoint, draws the same fine-tuning split and takes its share of each
global batch (the run's process split); the loss gathers across processes (:mod:`clpoison.methods.cleanclip_loss`) and
rank 0 alone writes ``tokenizer.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from ..contexts import FilterContext, TrainingContext
from ..poisoned.manifest import manifest_poisons
from ..data.captions.pair_source import is_pair_source
from ..engine.checkpoint import read_checkpoint
from ..errors import ConfigError, DataError
from ..methods.base import Method
from ..methods.clip_wrapper import WrappedCLIP
from ..methods.cleanclip_loss import cleanclip_loss
from ..run_folder import checkpoint_file as run_checkpoint
from ..utils.dist import is_main, world_size
from .base import DEFENSES, ClipTrainingDefense, DefenseParams
from .clip_views import AugmentedBatches, require_pair_batches

SPLITS = ("untouched", "range")


@dataclass
class CleanCLIPParams(DefenseParams):
    checkpoint: Optional[str] = None  # the poisoned CLIP: a run folder or its checkpoint.pt (required)
    finetune_split: str = "untouched"  # untouched | range (see the module docstring)
    finetune_pairs: int = 100000  # paper: 100K clean CC3M pairs
    finetune_range: Optional[list[int]] = None  # [start, stop) rows of the training split (finetune_split=range)
    clip_weight: float = 1.0
    inmodal_weight: float = 1.0
    eda_alpha: float = 0.1
    clean_images: bool = True  # the CLIP term sees the stored image (official); false: the run's augmented view

    def __post_init__(self) -> None:
        if self.finetune_split not in SPLITS:
            raise ConfigError(f"defense.params.finetune_split='{self.finetune_split}' unknown; choose untouched or range")
        if self.finetune_pairs < 2:
            raise ConfigError(f"defense.params.finetune_pairs={self.finetune_pairs} must be >= 2")
        if self.finetune_range is not None and (len(self.finetune_range) != 2 or not 0 <= self.finetune_range[0] < self.finetune_range[1]):
            raise ConfigError(f"defense.params.finetune_range={self.finetune_range} must be [start, stop) with 0 <= start < stop")
        if self.finetune_split == "range" and self.finetune_range is None:
            raise ConfigError("defense.params.finetune_split=range needs defense.params.finetune_range=[start,stop]")
        if self.clip_weight < 0 or self.inmodal_weight < 0 or self.clip_weight + self.inmodal_weight <= 0:
            raise ConfigError("defense.params.clip_weight and inmodal_weight must be >= 0 and not both 0")


def poisoned_run_shards(checkpoint: Path) -> list[Path]:
    """The poison shards listed by the ``stream`` section of the manifest in the poisoned run's folder (none when
    the run wrote no manifest or poisoned data in memory)."""
    path = checkpoint.parent / "manifest.json"
    if not path.is_file():
        return []
    try:
        stream = json.loads(path.read_text(encoding="utf-8")).get("stream") or {}
        folder = checkpoint.parent / stream.get("folder", "poison_shards")
        return [folder / str(f["file"]) for f in stream.get("poison_shards") or []]
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        raise DataError(f"the poisoned run's manifest '{path}' cannot be read; restore it (clpoison run writes it)") from None


class CleanCLIPMethod(WrappedCLIP):
    """Wraps the loaded CLIP; its state dict *is* the CLIP's, so the run's checkpoint loads wherever a CLIP one does."""

    name = "cleanclip"

    def __init__(self, clip: Method, params: CleanCLIPParams) -> None:
        super().__init__(clip)
        self.params = params

    def loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float], dict[str, Any]]:
        m = self.model
        scale = m.scale()
        img, img_aug = m.encode_image(torch.cat([batch["images"], batch["images_aug"]])).chunk(2)
        t, ta = batch["tokens"], batch["tokens_aug"]
        n = max(t.shape[1], ta.shape[1])
        pad = lambda x: nn.functional.pad(x, (0, n - x.shape[1]))  # noqa: E731  (0 = padding token)
        txt, txt_aug = m.encode_text(torch.cat([pad(t), pad(ta)])).chunk(2)
        loss, terms = cleanclip_loss(img, txt, img_aug, txt_aug, scale, self.params.clip_weight, self.params.inmodal_weight)
        return loss, {"logit_scale": float(scale.detach()), "cleanclip_clip": float(terms["clip"].detach()),
                      "cleanclip_inmodal": float(terms["inmodal"].detach())}, {}


def checkpoint_file(path: Optional[str]) -> Path:
    if not path:
        raise ConfigError("defense cleanclip needs defense.params.checkpoint: the poisoned CLIP run folder (or its "
                          "checkpoint.pt) to fine-tune")
    return run_checkpoint(path, "defense.params.checkpoint", "pass a finished CLIP run folder or its checkpoint.pt")


@DEFENSES.register("cleanclip")
class CleanCLIP(ClipTrainingDefense):
    """Fine-tune a (poisoned) CLIP checkpoint on a clean split with CLIP + in-modal losses."""

    name = "cleanclip"
    Params = CleanCLIPParams

    def train_pairs(self, n: int) -> int:
        p = self.params
        return p.finetune_range[1] - p.finetune_range[0] if p.finetune_split == "range" else min(n, p.finetune_pairs)

    def filter(self, train: Any, context: FilterContext) -> tuple[Any, dict[str, Any]]:
        path = checkpoint_file(self.params.checkpoint)  # fail before any work
        if not is_pair_source(train):
            raise ConfigError("defense 'cleanclip' needs image-text data (method.name=clip)")
        p, name = self.params, f"{getattr(train, 'name', 'train')}/cleanclip"
        poisons = manifest_poisons(context.manifest)
        if p.finetune_split == "range":
            subset = train.row_range(*p.finetune_range, poisons, name, "defense.params.finetune_range")
            info = {"split": "range", "poisons_in_split": 0}
        else:
            subset, info = train.untouched_subset(p.finetune_pairs, poisons, int(context.seed), name,
                                                  poisoned_run_shards(path), world_size(), "defense.params.finetune_pairs")
        self.info = {"cleanclip_finetune_pairs": int(len(subset)), "cleanclip_split": info["split"],
                     **({"cleanclip_finetune_shards": info["shards"]} if "shards" in info else {}),
                     "cleanclip_poisoned_rows": 0 if poisons is None else int(len(poisons)),
                     "cleanclip_poisons_in_split": info["poisons_in_split"]}
        return subset, dict(self.info)

    def wrap_training(self, method: Method, batches: Any, context: TrainingContext) -> tuple[Method, Any]:
        require_pair_batches(self.name, method, batches)
        path = checkpoint_file(self.params.checkpoint)
        ckpt = read_checkpoint(path, map_location="cpu")
        old = ckpt.get("config") or {}
        if (old.get("method") or {}).get("name") != "clip":
            raise ConfigError(f"defense.params.checkpoint '{path}' is not a CLIP checkpoint; pass a run of method clip")
        if old.get("model") != dict(context.model):
            raise ConfigError(f"defense.params.checkpoint '{path}' holds model {old.get('model')}, this run "
                              f"{dict(context.model)}; use the poisoned run's preset")
        clip = context.load_method(ckpt, f"defense.params.checkpoint '{path}'")  # the run evaluates its tokenizer
        if context.out_dir is not None and is_main():  # the run folder's tokenizer.json is the model's
            clip.tokenizer.save(Path(context.out_dir) / "tokenizer.json")
        self.info.update({"cleanclip_checkpoint": str(path), "cleanclip_checkpoint_epochs": int(ckpt.get("epoch", 0)),
                          "cleanclip_checkpoint_train_s": float(ckpt.get("train_seconds", 0.0)),
                          "cleanclip_optimizer": "fresh"})
        p, ctx, seed = self.params, clip.params.context_length, int(context.seed)
        base = batches.with_tokenizer(clip.tokenizer, ctx)  # this process's share, as the run's
        views = base.eda_views(clip.tokenizer, ctx, seed, p.eda_alpha)
        self.method = CleanCLIPMethod(clip, p)
        return self.method, AugmentedBatches(base, views, p.clean_images)
