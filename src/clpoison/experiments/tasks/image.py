"""The image-SSL task (SimCLR, MoCo v2, BYOL): labelled image data, two augmented views per image on the device,
evaluation by kNN and linear probe on frozen features (the probe is the attack's downstream classifier)."""

from __future__ import annotations

from typing import Any

from ...contexts import EvalContext
from ...data.augment import TwoViewAugment, make_sampler
from ...data.datasets import ImageSplits
from ...data.loader import TwoViewBatches
from ...errors import ConfigError
from ...engine.trainer import min_conv_channels
from ...eval.encoder_eval import attack_context, evaluate_encoder, feature_classifier, feature_embedder
from ...methods.base import Method
from ...methods.build import build_method
from ...utils.dist import local_batch_size, rank, world_size
from ..sources import load_image_source, subset_train
from .base import TASKS, Task


@TASKS.register("image")
class ImageTask(Task):
    modality = "image"

    def load(self) -> ImageSplits:
        d = self.cfg.data
        splits = load_image_source(d.name, d.path, self.cfg.seed, d.image_size, int(d.max_resident_gb * 2**30),
                                   d.train_limit, d.test_limit, d.downstream_fraction, d.exclude_classes)
        if d.train_per_class is not None or d.train_subset is not None:  # streamed folders subset too
            splits.train = subset_train(splits.train, d.train_per_class, d.train_subset, d.subset_seed)
        held = f", {len(splits.downstream)} held out as the downstream set" if splits.downstream is not None else ""
        if splits.withheld is not None:
            held = (f", classes {', '.join(splits.source['excluded_classes'])} kept out of pretraining "
                    f"({len(splits.withheld)} images; the probe's {len(splits.labelled)} labelled images keep them)")
        self.echo(f"data: {d.name} ({len(splits.train)} train / {len(splits.test)} test images{held})")
        fit = splits.labelled  # the kNN memory: the downstream split when one is held out
        if self.cfg.eval.knn_k > len(fit):  # checked before training, not after it
            raise ConfigError(f"eval.knn_k={self.cfg.eval.knn_k} is larger than the {len(fit)} labelled images the "
                              f"classifiers are fitted on; lower eval.knn_k")
        return splits

    def build_method(self, train_set: Any) -> Method:
        c = self.cfg
        return build_method(c.method.name, c.method.params, {"arch": c.model.arch, "width": c.model.width,
                                                            "stem_stride": c.model.stem_stride})

    def random_init_metrics(self, method: Method, splits: ImageSplits) -> dict[str, float]:
        """kNN top-1 of the untrained encoder (and its linear probe with ``eval.random_init_linear``)."""
        linear = self.cfg.eval.random_init_linear
        m0, _ = evaluate_encoder(method.encoder, splits, self.transform(), self.device, self.cfg.eval, linear=linear)
        self.echo(f"random-init kNN top-1: {m0['knn_top1']:.4f}")
        return {f"{k}_random_init": v for k, v in m0.items()}

    def batches(self, method: Method, train_set: Any, defense: Any) -> TwoViewBatches:
        cfg = self.cfg
        sampler = defense.view_sampler(cfg.augment) or make_sampler(cfg.augment)
        augment = TwoViewAugment(cfg.augment, sampler)
        source = train_set.batch_source(local_batch_size(cfg.train.batch_size), self.device, seed=cfg.seed, rank=rank(),
                                        world_size=world_size(), workers=cfg.data.stream_workers)  # data/split_info.py
        return TwoViewBatches(
            source,
            augment,
            channels_last=cfg.train.use_channels_last(self.device, min_conv_channels(method)),
        )

    def evaluate(self, method: Method, splits: ImageSplits) -> tuple[dict[str, Any], dict[str, Any]]:
        return evaluate_encoder(method.encoder, splits, self.transform(), self.device, self.cfg.eval)

    def context(self, method: Method, splits: Any, poisoned: Any, extras: dict) -> EvalContext:
        """``classify`` = the linear probe (the kNN classifier when the probe is off), ``embed`` = features."""
        tf, bs = extras["transform"], self.cfg.eval.batch_size
        clf = extras.get("probe") or extras["knn"]
        return attack_context(encoder=method.encoder, splits=splits, poisoned=poisoned, settings=self.cfg.eval,
                              device=self.device, classify=feature_classifier(method.encoder, tf, self.device, bs, clf),
                              embed=feature_embedder(method.encoder, tf, self.device, bs), extras=extras)

    def data_info(self, train_set: Any, splits: Any) -> dict[str, Any]:
        info = {"train_images": len(train_set), "test_images": len(splits.test), "classes": splits.class_names,
                "source": splits.source}
        if splits.downstream is not None:
            info["downstream_images"] = len(splits.downstream)
        if splits.withheld is not None:
            info["excluded_classes"] = splits.source["excluded_classes"]
        return info

    def throughput(self, n_samples: int, seconds: float) -> dict[str, float]:
        return {"pretrain_images_per_s": n_samples / max(seconds, 1e-9)}
