"""What the image-SSL backdoors (CorruptEncoder, SSL-Backdoor, PoisonedEncoder) share: their base parameters
(target, budget, trigger over :data:`DEFAULT_TRIGGER`), the poison/finish skeleton that resolves the target and
budget and appends the poisons with a manifest, and the evaluation of CorruptEncoder (Zhang et al., CVPR 2024,
arXiv 2211.08229): CA and ASR of the clean-data linear probe with the trigger at [0.25, 0.75] of each non-target
test image, plus the label-free backdoor z-score.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Optional

import torch

from ..contexts import EvalContext, PoisonContext
from ..data.datasets import ImageDataset, ImageSplits, concat_datasets, stack_on_canvas
from ..errors import ConfigError, DataError
from ..eval.attack_metrics import backdoor_asr, backdoor_metrics, backdoor_zscore, delta_cos, knn_asr
from .base import Attack, AttackParams, PoisonResult
from .budget import resolve_budget
from ..poisoned.manifest import build_manifest
from ..triggers import TriggerSpec, build_trigger, trigger_spec

#: Trigger defaults for the image-SSL backdoors: the paper's 40-px colourful patch, evaluated at [0.25, 0.75].
DEFAULT_TRIGGER = {"pattern": "uniform", "size": 40, "location": "center-range", "center_range": [0.25, 0.75], "seed": 0}


@dataclass
class SSLBackdoorBaseParams(AttackParams):
    target: Any = "airplane"  # target class (name or index); the paper's is ImageNet100-B "hunting dog"
    poison_rate: Optional[float] = None  # poisons / clean training images (paper: 0.5%, used when neither is set)
    poison_count: Optional[int] = None  # absolute number instead of the rate (paper: 650)
    trigger: dict = field(default_factory=dict)  # TriggerSpec keys over DEFAULT_TRIGGER
    eval_seed: int = 1234  # seeds the trigger positions on the test images (fixed per image, as the paper's files)
    zscore_images: int = 1000  # test images for the label-free backdoor z-score
    # false: the paper's setting, the target class kept out of pretraining (data.exclude_classes) — checked;
    # true: the target class must be in the pretraining data; null: whatever the data is (recorded in the manifest)
    target_in_pretraining: Optional[bool] = None

    default_trigger: ClassVar[dict] = DEFAULT_TRIGGER
    patch_only: ClassVar[bool] = False  # attacks that paste the trigger into a composite need a patch

    def __post_init__(self) -> None:
        if self.target_in_pretraining not in (None, True, False):
            raise ConfigError(f"attack.params.target_in_pretraining={self.target_in_pretraining!r} must be true, false "
                              "or null")
        self.trigger_spec = trigger_spec(self.trigger, self.default_trigger, "attack.params.trigger")
        if self.patch_only and not isinstance(self.trigger_spec, TriggerSpec):
            raise ConfigError("attack.params.trigger.type=ctrl: this attack pastes a patch trigger into its composites; "
                              "use a patch trigger (type: patch) or the ssl-backdoor / ctrl attacks for CTRL")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["trigger"] = self.trigger_spec.to_dict()
        return d


def image_backdoor_eval(context: EvalContext, target: int, trigger: Any, eval_seed: int,
                        zscore_images: int) -> dict[str, Any]:
    """The image backdoors' metrics from an attack context: ASR against ``target``, the clean accuracy ``ca`` and
    the no-trigger rate of the same classifier (the linear probe); with the context's kNN classifier (fitted on the
    clean training bank) the kNN ASR (``asr_knn``; ``asr_knn_all``: CTRL's official all-images definition) and
    ``delta_cos``; the same three for the mismatched-trigger control (``trigger.mismatched()``: equal energy,
    another frequency or patch) as ``asr_mismatched``, ``asr_knn_mismatched``, ``asr_knn_all_mismatched`` and
    ``delta_cos_mismatched``; and the label-free backdoor z-score."""
    test = context.splits.test
    sizes = getattr(test, "sizes", None)
    labelled = bool(len(test)) and bool((test.labels >= 0).all())
    other = trigger.mismatched() if hasattr(trigger, "mismatched") else None
    m: dict[str, Any] = {}
    if context.classify is not None and labelled:
        m.update(backdoor_metrics(context.classify, test.images, test.labels, target, trigger, eval_seed, sizes))
        m["ca"] = m["asr_clean_accuracy"]
        if other is not None:
            m["asr_mismatched"] = backdoor_asr(context.classify, test.images, test.labels, target, other,
                                               eval_seed, sizes)["asr"]
    knn = context.knn
    if context.embed is not None and knn is not None and labelled:
        embed = context.embed
        for suffix, t in (("", trigger), ("_mismatched", other)):
            if t is None:
                continue
            k = knn_asr(knn, embed, test.images, test.labels, target, t, eval_seed, sizes)
            m.update({key + suffix: v for key, v in k.items() if not (suffix and key.endswith("no_trigger"))})
            m["delta_cos" + suffix] = delta_cos(embed, test.images, test.labels, target, t, knn.bank, knn.labels,
                                                eval_seed, sizes)
    if context.embed is not None:
        m["backdoor_zscore"] = backdoor_zscore(context.embed, test.images, trigger, eval_seed, zscore_images)
    return m


@contextmanager
def single_thread():
    """Crafting does many tiny per-image tensor ops; intra-op threads only add wake-up latency there (measured
    11 ms instead of 3 µs per op on a loaded 2-core machine), so it runs on one thread and restores the setting."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def require_images(splits: Any, attack: str) -> ImageSplits:
    if not isinstance(splits, ImageSplits) or not isinstance(splits.train, ImageDataset):
        raise DataError(f"{attack} poisons a resident image dataset; for imagefolder data raise "
                        "data.max_resident_gb so the training split is held in memory")
    return splits


class SSLBackdoorAttack(Attack):
    """Common evaluation: CA and ASR of the clean-data linear probe, trigger at [0.25, 0.75] of test images."""

    modality = "image"
    version = "1"

    def __init__(self, params: SSLBackdoorBaseParams) -> None:
        super().__init__(params)
        self.trigger = build_trigger(params.trigger_spec)  # the one trigger used at poison and at evaluation time

    default_rate = 0.005

    def target_index(self, ds: Any) -> int:
        try:
            return ds.class_index(self.params.target)
        except DataError as e:
            raise ConfigError(f"attack.params.target: {e}") from None

    def poison(self, splits: Any, seed: int, context: Optional[PoisonContext] = None) -> PoisonResult:
        """Resolve the target and budget, then :meth:`craft` (single-threaded: the per-image work is tiny)."""
        with single_thread():
            t0 = time.perf_counter()
            splits = require_images(splits, self.name)
            train = splits.train
            target = self.target_index(train)
            self.check_setting(splits, target)
            n = resolve_budget(self.params.poison_rate, self.params.poison_count, len(train), self.default_rate)
            if context is not None and context.run_dir is not None:  # a run evaluates it after training
                self.check_test_fit(splits.test)
            return self.craft(splits, target, n, torch.Generator().manual_seed(int(seed)), seed, t0)

    def craft(self, splits: ImageSplits, target: int, n: int, g: torch.Generator, seed: int, t0: float) -> PoisonResult:
        raise NotImplementedError

    def check_setting(self, splits: ImageSplits, target: int) -> None:
        """``target_in_pretraining`` against the data: false needs the target class in ``data.exclude_classes``."""
        want, name = self.params.target_in_pretraining, splits.train.class_names[target]
        present = bool((splits.train.labels == target).any())
        if want is False and present:
            raise ConfigError(f"attack.params.target_in_pretraining=false but the target class '{name}' is in the "
                              f"pretraining data; add it to data.exclude_classes (e.g. data.exclude_classes=[{name}])")
        if want is True and not present:
            raise ConfigError(f"attack.params.target_in_pretraining=true but the target class '{name}' has no "
                              "pretraining images; remove it from data.exclude_classes")

    def check_test_fit(self, test: Any) -> None:
        """The evaluation pastes the trigger into the test images: check it fits them before any training."""
        if len(test) and hasattr(self.trigger, "check_fits"):
            h, w = (int(v) for v in test.valid_sizes().min(0).values)
            try:
                self.trigger.check_fits(h, w)
            except ConfigError as e:
                raise ConfigError(f"attack.params.trigger does not fit the {h}x{w} test images the attack is "
                                  f"evaluated on: {e}") from None

    @staticmethod
    def target_pool(splits: ImageSplits, target: int) -> tuple[ImageDataset, list[str]]:
        """The target-class images the attacker draws references / sources from, and a provenance name per row:
        the class's training images, or — when the class is kept out of pretraining — its withheld images."""
        train, held = splits.train, splits.withheld
        rows = (train.labels == target).nonzero().view(-1)
        where = "train"
        if not len(rows) and held is not None:
            train, where = held, "withheld"
            rows = (held.labels == target).nonzero().view(-1)
        return train.subset(rows), [f"{where}[{i}]" for i in rows.tolist()]

    @staticmethod
    def setting(splits: ImageSplits, target: int) -> dict:
        """The experimental setting the manifest records: is the target class in the pretraining data?"""
        return {"target_in_pretraining": bool((splits.train.labels == target).any()),
                "excluded_classes": list(splits.source.get("excluded_classes", []))}

    def evaluate(self, context: EvalContext) -> dict[str, Any]:
        p = self.params
        return image_backdoor_eval(context, self.target_index(context.splits.test), self.trigger, p.eval_seed,
                                   p.zscore_images)

    def finish(self, splits: ImageSplits, extra: list[torch.Tensor], target: int, seed: int, details: dict,
               t0: float) -> PoisonResult:
        """Append ``extra`` images (any sizes) to the training split and write the manifest."""
        train = splits.train
        n = len(extra)
        if n:
            imgs, sizes = stack_on_canvas(extra)
            added = ImageDataset(imgs, torch.full((n,), target, dtype=torch.int64), list(train.class_names),
                                 f"{self.name}-poisons", sizes)
            if bool((sizes == torch.tensor(train.image_shape[1:])).all()) and train.sizes is None:
                added.sizes = None  # same size as the clean images: no canvas needed
            new_train = concat_datasets([train, added], train.name + f"+{self.name}")
        else:
            new_train = train
        poisoned = ImageSplits(new_train, splits.test, dict(splits.source))
        secs = time.perf_counter() - t0
        details = {**details, **self.setting(splits, target), "poison_count": n, "craft_seconds": round(secs, 4),
                   "craft_images_per_s": round(n / secs, 2) if secs > 0 and n else None}
        manifest = build_manifest(
            attack=self.name, attack_version=self.version, params=self.params.to_dict(), seed=seed, source=splits,
            output=poisoned, added_indices=range(len(train), len(train) + n), trigger=self.trigger,
            targets={"target": train.class_names[target], "target_index": target}, details=details)
        return PoisonResult(poisoned, manifest)
