"""The image–text task (``method: clip``): caption data, tokenizer, model, zero-shot/retrieval/probe eval.

:func:`~clpoison.experiments.runner.run_experiment` calls these in order (see :mod:`.base`) — ``load`` → attack ``poison`` (on the
:class:`~clpoison.data.captions.CaptionSplits`) → defense ``filter`` → ``build_method`` (trains the BPE tokenizer on
the captions actually trained on, or loads ``method.params.tokenizer``; a resumed run reuses the ``tokenizer.json``
of its partial folder) → ``random_init_metrics`` (zero-shot of the untrained model: the control) → ``batches`` →
the engine's :class:`~clpoison.engine.Trainer` → ``evaluate`` → ``context`` (for :meth:`Attack.evaluate`).

Metrics: ``zeroshot_top1`` (prompt ensemble over the dataset's class names, on the labelled test split),
``recall_at_{K}_i2t`` / ``recall_at_{K}_t2i`` on the test pairs, ``knn_top1`` and ``linear_top1`` (the foundation's
kNN and linear probe on image-tower features), and ``zeroshot_top1_random_init``.

Example (a 1-epoch run on 256 pairs, well under a minute)::

    >>> from clpoison.experiments.config import build_config
    >>> from clpoison.experiments.runner import run_experiment
    >>> cfg = build_config({"preset": "clip-small"}, ["train.epochs=1", "data.train_limit=256", "data.test_limit=64",
    ...                    "train.batch_size=64", "train.progress=false"])
    >>> import tempfile; res = run_experiment(cfg, tempfile.mkdtemp() + "/run")  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import torch

from ...data.caption_loader import CaptionBatches, CaptionImageAugment, flat_captions
from ...data.caption_readers import load_caption_splits, read_caption_shards
from ...data.shard_stream import StreamingCaptionBatches, StreamingCaptionSet
from ...data.captions import CaptionDataset, CaptionSplits
from ...data.datasets import ImageDataset, ImageSplits
from ...data.tokenizer import CaptionTokenizer
from ...errors import ConfigError
from ...eval.encoder_eval import attack_context, evaluate_encoder
from ...eval.retrieval import retrieval_recall
from ...eval.zeroshot import CIFAR_TEMPLATES, ZeroShotClassifier, encode_texts
from ...methods import METHODS
from ...methods.base import Method
from ...methods.build import build_method
from ...utils.dist import is_main, local_batch_size, rank, world_size
from ..config import ExperimentConfig
from .base import TASKS, Task

TOKENIZER_NAME = "tokenizer.json"


def limit_pairs(ds: CaptionDataset, n: int | None) -> CaptionDataset:
    return ds if n is None or n >= len(ds) else ds.subset(torch.arange(n))


def labelled(ds: CaptionDataset) -> bool:
    return bool(ds.class_names) and ds.labels is not None and bool((ds.labels >= 0).all()) and len(ds) > 0


@TASKS.register("image-text")
class ImageTextTask(Task):
    modality = "image-text"

    def __init__(self, cfg: ExperimentConfig, device: torch.device, work: Optional[Path] = None,
                 echo: Callable[[str], None] = lambda s: None) -> None:
        super().__init__(cfg, device, work, echo)
        _, self.params = METHODS.params(cfg.method.name, cfg.method.params, "method.params")
        self.channels_last = cfg.train.use_channels_last(device, cfg.model.width)  # = min_conv_channels of the tower
        self.tokenizer: CaptionTokenizer | None = None
        self.info: dict[str, Any] = {}

    # -- data -------------------------------------------------------------------------------------------------
    def load(self) -> CaptionSplits:
        cfg = self.cfg
        size = cfg.data.image_size or cfg.augment.out_size
        if cfg.data.captions.stream:
            splits = self.load_streamed(size)
        else:
            splits = load_caption_splits(cfg.data.name, cfg.data.path, cfg.data.captions, size, cfg.seed)
            splits.train = limit_pairs(splits.train, cfg.data.train_limit)
        splits.test = limit_pairs(splits.test, cfg.data.test_limit)
        n_caps = "streamed" if cfg.data.captions.stream else sum(len(c) for c in splits.train.captions)
        self.echo(f"data: {cfg.data.name} ({len(splits.train)} train pairs / {n_caps} captions, {len(splits.test)} test pairs)")
        skipped = splits.source.get("skipped") or {}
        if any(skipped.values()):
            self.echo(f"warning: skipped bad rows {skipped} (data.captions.on_error=skip)")
        return splits

    def load_streamed(self, size: int) -> CaptionSplits:
        """Train shards streamed (:mod:`clpoison.data.shard_stream`), the test shards held in memory."""
        cfg, c = self.cfg, self.cfg.data.captions
        if cfg.data.name != "captions-tar":
            raise ConfigError(f"data.captions.stream=true streams tar shards; set data.name=captions-tar (not {cfg.data.name})")
        if not cfg.data.path or not c.test_path:
            raise ConfigError("data.captions.stream=true needs data.path (the train shards) and data.captions.test_path "
                              "(held-out shards, loaded into memory for evaluation)")
        if cfg.attack.name != "none" or cfg.defense.name != "none":
            raise ConfigError("attacks and defenses work on data held in memory; with data.captions.stream=true use "
                              "attack none and defense none (or write the poisoned set with clpoison poison first)")
        train = StreamingCaptionSet(cfg.data.path, size, c.on_error, "train")
        test, skipped = read_caption_shards(c.test_path, c.on_error, size, "test")
        return CaptionSplits(train, limit_pairs(test, cfg.data.test_limit),
                             {"name": cfg.data.name, "path": str(cfg.data.path), "test_path": c.test_path, "streamed": True,
                              "train_shards": len(train.shards), "skipped": {"train": {}, "test": skipped}})

    # -- model ------------------------------------------------------------------------------------------------
    def make_tokenizer(self, train_set: CaptionDataset) -> CaptionTokenizer:
        p = self.params
        saved = None if self.work is None else self.work / TOKENIZER_NAME
        if p.tokenizer:
            tok, how = CaptionTokenizer.from_file(p.tokenizer), f"loaded from {p.tokenizer}"
        elif saved is not None and saved.exists():
            tok, how = CaptionTokenizer.from_file(saved), "reloaded from the partial run"
        else:
            tok, how = CaptionTokenizer.train(flat_captions(train_set), p.vocab_size), f"trained on {len(train_set)} pairs"
        if saved is not None and is_main():  # several processes: rank 0 writes it, the others reload it
            tok.save(saved)
        self.info["tokenizer"] = {"vocab_size": tok.vocab_size, "source": how, "context_length": p.context_length}
        self.echo(f"tokenizer: BPE, {tok.vocab_size} tokens, {how}")
        return tok

    def build_method(self, train_set: CaptionDataset):
        self.tokenizer = self.make_tokenizer(train_set)
        c = self.cfg
        return build_method(c.method.name, c.method.params, {"arch": c.model.arch, "width": c.model.width,
                                                            "stem_stride": c.model.stem_stride}, tokenizer=self.tokenizer)

    def method_from_checkpoint(self, ckpt: Mapping[str, Any], what: str = "checkpoint") -> Method:
        """The trained CLIP of a checkpoint; its tokenizer (from the checkpoint) becomes the task's."""
        method = super().method_from_checkpoint(ckpt, what)
        self.tokenizer = method.tokenizer
        return method

    def batches(self, method: Any, train_set: CaptionDataset, defense: Any) -> Any:
        cfg = self.cfg
        if defense.view_sampler(cfg.augment) is not None:
            raise ConfigError(f"defense '{cfg.defense.name}' replaces the image-SSL view sampler, which CLIP does not use")
        a, c = cfg.augment, cfg.data.captions
        augment = CaptionImageAugment(a.out_size, c.augment, c.translate_px, a.crop_scale, a.crop_ratio, a.flip_p, a.mean, a.std)
        if getattr(train_set, "streaming", False):
            return StreamingCaptionBatches(train_set, self.tokenizer, self.params.context_length,
                                           local_batch_size(cfg.train.batch_size), self.device, cfg.seed, augment,
                                           self.channels_last, rank(), world_size(), c.workers, c.shuffle_buffer)
        tokens = self.tokenizer.encode(flat_captions(train_set), self.params.context_length)
        self.info["truncated_train_captions"] = self.tokenizer.last_truncated
        if self.tokenizer.last_truncated:
            self.echo(f"note: {self.tokenizer.last_truncated} training captions truncated to {self.params.context_length} tokens")
        return CaptionBatches(train_set, tokens, local_batch_size(cfg.train.batch_size), self.device, cfg.seed, augment,
                              self.channels_last, rank=rank(), world_size=world_size())

    # -- evaluation -------------------------------------------------------------------------------------------
    def zeroshot(self, method: Any, class_names: list[str]) -> ZeroShotClassifier:
        return ZeroShotClassifier(
            method.model, self.tokenizer, class_names, self.cfg.eval.zeroshot_templates or CIFAR_TEMPLATES,
            transform=self.transform(), device=self.device, batch_size=self.cfg.eval.batch_size,
            context_length=self.params.context_length, channels_last=self.channels_last,
        )

    def random_init_metrics(self, method: Any, splits: CaptionSplits) -> dict[str, float]:
        if not labelled(splits.test):
            return {}
        acc = self.zeroshot(method, splits.class_names).top1(splits.test.images, splits.test.labels)
        self.echo(f"random-init zero-shot top-1: {acc:.4f}")
        return {"zeroshot_top1_random_init": acc}

    def evaluate(self, method: Any, splits: CaptionSplits) -> tuple[dict[str, Any], dict[str, Any]]:
        cfg = self.cfg
        metrics: dict[str, Any] = {}
        extras: dict[str, Any] = {"tokenizer": self.tokenizer, "model": method.model, "transform": self.transform(),
                                  "templates": list(cfg.eval.zeroshot_templates or CIFAR_TEMPLATES)}
        test = splits.test
        zs = None
        if splits.class_names:
            zs = self.zeroshot(method, splits.class_names)
            extras.update(zeroshot=zs, text_features=zs.text_features)
        if zs is not None and labelled(test):
            metrics["zeroshot_top1"] = zs.top1(test.images, test.labels)
        # retrieval on the test pairs (every caption of every test image)
        img = (zs or self.zeroshot_free(method)).embed(test.images)
        texts = flat_captions(test)
        owner = torch.repeat_interleave(torch.arange(len(test)), torch.tensor([len(c) for c in test.captions]))
        txt = encode_texts(method.model, self.tokenizer, texts, self.params.context_length, device=self.device)
        metrics.update(retrieval_recall(img, txt, owner, cfg.eval.retrieval_ks))
        # the foundation's kNN + linear probe on image-tower features (needs labels on both splits)
        if labelled(splits.train) and labelled(test):
            img_splits = ImageSplits(
                ImageDataset(splits.train.images, splits.train.labels, splits.class_names, "train", splits.train.sizes),
                ImageDataset(test.images, test.labels, splits.class_names, "test", test.sizes),
            )
            m, e = evaluate_encoder(method.encoder, img_splits, self.transform(), self.device, cfg.eval)
            metrics.update(m)
            extras.update({k: v for k, v in e.items() if k != "transform"})
        return metrics, extras

    def zeroshot_free(self, method: Any) -> ZeroShotClassifier:
        """An image embedder for data without class names (no text features)."""
        return ZeroShotClassifier(None, None, (), transform=self.transform(), device=self.device,
                                  batch_size=self.cfg.eval.batch_size, channels_last=self.channels_last, embed_model=method.model)

    def context(self, method: Any, splits: Any, poisoned: Any, extras: dict) -> dict[str, Any]:
        """The attack-evaluation contract: ``classify`` = zero-shot predictions, ``embed`` = CLIP image embeddings."""
        zs = extras.get("zeroshot")
        embedder = zs or self.zeroshot_free(method)

        def classify(images: torch.Tensor) -> torch.Tensor:
            if zs is None:
                raise ConfigError("this caption dataset has no class names, so there is no zero-shot classifier")
            return zs.predict(images)

        return attack_context(encoder=method.encoder, splits=splits, poisoned=poisoned, cfg=self.cfg, device=self.device,
                              classify=classify, embed=embedder.embed, extras=extras)

    def data_info(self, train_set: CaptionDataset, splits: CaptionSplits) -> dict[str, Any]:
        return {"train_pairs": len(train_set), "train_captions": sum(len(c) for c in train_set.captions),
                "test_pairs": len(splits.test), "classes": splits.class_names, "source": splits.source, **self.info}

    def throughput(self, n_samples: int, seconds: float) -> dict[str, float]:
        return {"pretrain_pairs_per_s": n_samples / max(seconds, 1e-9)}
