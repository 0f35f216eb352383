"""No-Label Backdoors (Wang, Ma, Jegelka, Wang, "How to Craft Backdoors with Unlabeled Data Alone?", ICLR 2024 DPFM
workshop, arXiv 2404.06694; official ``main_poison.py`` + ``poisoning_utils.py``; ``algorithms.md`` §5).

The attacker holds only the *unlabelled* pretraining set. It

1. gets SSL features of every training image (:mod:`.attacker_features`: its own encoder pretrained on the same
   data through the engine, a trained encoder checkpoint, or a feature file);
2. selects the poison set P, ``|P| = M``, by ``selection`` (:mod:`.poison_selection`): ``kmeans`` (pseudo-labels;
   the smallest cluster with ≥ M members, its first M in dataset order), ``con`` (the contrastive / mutual-
   information rule: the anchor with the largest top-M minus next-M similarity, and its M nearest neighbours), the
   ablations ``conp`` / ``conn``, and the baselines ``random`` and ``target`` (M random images of a true class — it
   needs labels: the upper reference);
3. applies the trigger to P **in place, changing nothing else** (labels untouched; the victim never reads them).

Budget: the paper's ``M = int(poison_rate · N / clusters)`` (rate 0.6: 2,700 = 6 % of CIFAR-10's 45,000) or
``poison_count``. Trigger: NLB's CIFAR trigger by default — the 3 × 3 ``checkerboard_center`` values at pixels
14..16 (:data:`NLB_TRIGGER`); any trigger of :mod:`clpoison.triggers` works, CTRL (``type: ctrl``) and blended full-image
patterns included.

Evaluation (for the evaluator only; the attack never uses labels to select except ``target``): the **anchor label**
is the majority true label of P and **TPR** the share of P that carries it; ASR is the one backdoor definition
(:func:`~clpoison.eval.attack_metrics.backdoor_metrics`): non-anchor test images with the trigger that the
clean-label linear probe assigns to the anchor label. The manifest records P, the rule, the anchor row and scores
(full score vector in the ``selection_scores.npy`` artifact), the anchor label and TPR.

Deviations: the linear probe is the library's (L2-normalised features, LBFGS) instead of 100 SGD epochs; the
trigger at evaluation is pasted on the uint8 image before the test transform (official: the same, on PIL images).

Example (CLI)::

    printf 'preset: nlb-small\\n' > nlb.yaml && clpoison run nlb.yaml attack.params.selection=kmeans --out runs/nlb

    >>> import torch
    >>> from clpoison.data.datasets import ImageDataset, ImageSplits
    >>> g = torch.Generator().manual_seed(0)
    >>> ds = ImageDataset(torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8, generator=g), torch.arange(40) % 2, ["a", "b"])
    >>> res = NLB(NLB.Params(selection="random", poison_count=6)).poison(ImageSplits(ds, ds), 0)
    >>> len(res.manifest["poisoned_indices"]), res.manifest["targets"]["anchor"] in ("a", "b"), len(res.splits.train)
    (6, True, 40)
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

import numpy as np
import torch

from ...contexts import EvalContext, PoisonContext
from ...data.datasets import ImageDataset, ImageSplits
from ...errors import ConfigError, DataError
from .attacker_features import attacker_features
from ..base import ATTACKS, Attack, AttackParams, PoisonResult
from ...poisoned.manifest import build_manifest
from .poison_selection import RULES, nlb_budget, purity, select
from ..ssl_backdoor_base import image_backdoor_eval, require_images
from ...engine.surrogate import Surrogate
from ...triggers import build_trigger, trigger_spec

#: NLB's CIFAR-10 trigger (``--trigger_type checkerboard_center --trigger_alpha 1.0``): pixels 14..16 at 32 px.
NLB_TRIGGER = {"pattern": "nlb", "size": 3, "location": "center", "opacity": 1.0}
NEEDS_FEATURES = ("kmeans", "con", "conp", "conn")


@dataclass
class NLBParams(AttackParams):
    selection: str = "con"  # kmeans | con | conp | conn | random | target
    poison_rate: Optional[float] = None  # M = int(rate · N / clusters); the paper's 0.6 when neither is set
    poison_count: Optional[int] = None  # M directly
    clusters: int = 10  # k-means clusters, and the divisor of the budget rule (#classes in the paper)
    target: Any = None  # selection=target: the true class to poison (name or index; needs labels)
    trigger: dict = field(default_factory=dict)  # trigger keys over NLB_TRIGGER (type: ctrl for CTRL)
    features: Optional[str] = None  # .npy / .npz (N, D) features of the training images
    encoder: Optional[str] = None  # a clpoison run folder / checkpoint.pt whose encoder gives the features
    attacker: dict = field(default_factory=dict)  # Surrogate spec of the encoder the attacker pretrains itself
    attacker_epochs: int = 500  # its pretraining epochs (official: the victim's SimCLR recipe, 500 at CIFAR-10)
    attacker_batch_size: int = 256
    chunk: Optional[int] = None  # rows per similarity chunk (default: 256 MB of similarities)
    eval_seed: int = 1234  # seeds the trigger placement at evaluation (random locations only)
    zscore_images: int = 1000  # test images for the label-free backdoor z-score

    default_trigger: ClassVar[dict] = NLB_TRIGGER

    def __post_init__(self) -> None:
        if self.selection not in RULES:
            raise ConfigError(f"attack.params.selection='{self.selection}' is unknown; choose one of: {', '.join(RULES)}")
        if self.selection == "target" and self.target is None:
            raise ConfigError("attack.params.selection=target needs attack.params.target (a class name or index)")
        if self.poison_rate is not None and self.poison_count is not None:
            raise ConfigError("give only one of attack.params.poison_rate and attack.params.poison_count")
        if self.poison_rate is not None and (isinstance(self.poison_rate, bool) or not float(self.poison_rate) > 0):
            raise ConfigError(f"attack.params.poison_rate={self.poison_rate} must be > 0 (M = rate · N / clusters; paper 0.6)")
        if self.poison_count is not None and (isinstance(self.poison_count, bool) or not isinstance(self.poison_count, int)
                                              or self.poison_count < 1):
            raise ConfigError(f"attack.params.poison_count={self.poison_count!r} must be a positive integer")
        for k in ("clusters", "attacker_batch_size"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"attack.params.{k}={v!r} must be a positive integer")
        if isinstance(self.attacker_epochs, bool) or not isinstance(self.attacker_epochs, int) or self.attacker_epochs < 0:
            raise ConfigError(f"attack.params.attacker_epochs={self.attacker_epochs!r} must be an integer >= 0")
        if self.chunk is not None and (not isinstance(self.chunk, int) or self.chunk < 1):
            raise ConfigError(f"attack.params.chunk={self.chunk!r} must be a positive integer or null")
        if self.features and self.encoder:
            raise ConfigError("give only one of attack.params.features and attack.params.encoder")
        self.trigger_spec = trigger_spec(self.trigger, self.default_trigger, "attack.params.trigger")
        self.surrogate = Surrogate.from_dict(self.attacker, "attack.params.attacker")

    def to_dict(self) -> dict:
        d = super().to_dict()
        d["trigger"] = self.trigger_spec.to_dict()
        return d


def scores_npy(scores: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    np.save(buf, scores.float().numpy(), allow_pickle=False)
    return buf.getvalue()


@ATTACKS.register("nlb")
class NLB(Attack):
    """Select P from the attacker's features, trigger P in place; ASR against P's majority label."""

    name = "nlb"
    modality = "image"
    version = "1"
    Params = NLBParams

    def __init__(self, params: NLBParams) -> None:
        super().__init__(params)
        self.trigger = build_trigger(params.trigger_spec)  # the one trigger used at poison and at evaluation time
        self.anchor_label: Optional[int] = None
        self.tpr: Optional[float] = None

    def poison(self, splits: Any, seed: int, context: Optional[PoisonContext] = None) -> PoisonResult:
        ctx, p = context or PoisonContext(), self.params
        splits = require_images(splits, self.name)
        train = splits.train
        n = len(train)
        self.trigger.check_fits(*train.images.shape[2:])
        m = nlb_budget(p.poison_rate, p.poison_count, n, p.clusters)
        target = None
        if p.selection == "target":
            try:
                target = train.class_index(p.target)
            except DataError as e:
                raise ConfigError(f"attack.params.target: {e}") from None
        feats, finfo = None, {}
        if p.selection in NEEDS_FEATURES:
            work = ctx.work_dir
            feats, finfo = attacker_features(
                train.images, features=p.features, encoder=p.encoder, surrogate=p.surrogate, epochs=p.attacker_epochs,
                batch_size=p.attacker_batch_size, device=ctx.device, seed=seed,
                work_dir=None if work is None else work / "attacker", progress=bool(ctx.progress),
                echo=ctx.echo)
            feats = feats.to(ctx.device or "cpu")  # the chunked top-2M runs on the device
        t0 = time.perf_counter()
        sel = select(p.selection, feats, m, n=n, seed=seed, n_clusters=p.clusters, labels=train.labels, target=target,
                     chunk=p.chunk)
        select_s = time.perf_counter() - t0
        idx = sel.indices.long().cpu()
        images = train.images.clone()
        sizes = None if train.sizes is None else train.sizes[idx]
        images[idx] = self.trigger.apply(train.images[idx], torch.Generator().manual_seed(int(seed)), sizes)
        poisoned = ImageSplits(ImageDataset(images, train.labels.clone(), list(train.class_names), train.name + "+nlb",
                                            None if train.sizes is None else train.sizes.clone()),
                               splits.test, dict(splits.source))
        targets: dict[str, Any] = {}
        if bool((train.labels >= 0).all()) and train.class_names:
            anchor, tpr = purity(idx, train.labels)
            self.anchor_label, self.tpr = anchor, tpr
            targets = {"anchor": train.class_names[anchor], "anchor_index": anchor, "tpr": tpr,
                       "target": train.class_names[anchor], "target_index": anchor}
        details: dict[str, Any] = {"selection": p.selection, "budget": m, "selection_seconds": round(select_s, 4),
                                   "features": finfo, **sel.info}
        artifacts: dict[str, bytes] = {}
        if sel.scores is not None:
            sc = sel.scores
            details.update(anchor_row=sel.anchor, anchor_score=float(sc[sel.anchor]),
                           score_quantiles={q: float(sc.quantile(float(q))) for q in ("0.5", "0.9", "0.99")},
                           selected_scores=[float(sc[i]) for i in idx])
            artifacts["selection_scores.npy"] = scores_npy(sc)
        manifest = build_manifest(attack=self.name, attack_version=self.version, params=p.to_dict(), seed=seed,
                                  source=splits, output=poisoned, poisoned_indices=idx.tolist(), trigger=self.trigger,
                                  targets=targets, details=details)
        return PoisonResult(poisoned, manifest, artifacts)

    def restore(self, manifest: dict) -> None:
        t = manifest.get("targets") or {}
        self.anchor_label, self.tpr = t.get("anchor_index"), t.get("tpr")

    def evaluate(self, context: EvalContext) -> dict[str, Any]:
        """ASR against the anchor label (CA and the no-trigger rate of the same probe), TPR, the z-score."""
        if self.anchor_label is None:
            return {}
        p = self.params
        return {"nlb_anchor_label": self.anchor_label, "nlb_tpr": self.tpr,
                **image_backdoor_eval(context, self.anchor_label, self.trigger, p.eval_seed, p.zscore_images)}
