"""Carlini & Terzis targeted poisoning on CLIP ("Poisoning and Backdooring Contrastive Learning", ICLR 2022,
arXiv 2106.09667), in the RoCLIP/SafeCLIP protocol (dossier §1.4; RoCLIP ``model/create_poison.ipynb``).

Each target is a victim image x' drawn from the **test** split (never a training image) with an adversarial label
y' ≠ its true label. The attacker *adds* k pairs (x', c_1..c_k) to the training data, c_i drawn from the caption
set of y'. Success for a target: the zero-shot top-1 of the clean x' is y'. Many targets are poisoned in one run,
and the success rate over targets is reported with a Wilson 95% interval.

Defaults (``Params``): 16 targets (SafeCLIP's 15/16 = 93.75%), 3 pairs per target (the paper's 1–3 poisons; RoCLIP
uses 100), captions from the caption set, victims and adversarial labels drawn with the run seed (or
``victim_seed``). The small preset uses 5 pairs per target (calibration §2). ``pairs_per_target: 0`` is the clean
control: the same victims are evaluated on a model trained on clean data.

Example::

    >>> import torch
    >>> from clpoison.data.captions import CaptionDataset, CaptionSplits
    >>> cls = ["cat", "dog"]
    >>> tr = CaptionDataset(torch.zeros(10, 3, 8, 8, dtype=torch.uint8), [[f"a {cls[i % 2]}"] for i in range(10)], cls, torch.arange(10) % 2)
    >>> te = CaptionDataset(torch.ones(6, 3, 8, 8, dtype=torch.uint8), [["x"]] * 6, cls, torch.arange(6) % 2)
    >>> res = CarliniTargeted(CarliniTargeted.Params(num_targets=2, pairs_per_target=3)).poison(CaptionSplits(tr, te), 0)
    >>> len(res.splits.train), res.manifest["added_indices"][:3]
    (16, [10, 11, 12])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from ...contexts import EvalContext, PoisonContext
from ...data.captions import CaptionDataset
from ...errors import ConfigError, DataError
from ...eval.attack_metrics import predict, targeted_success
from ...eval.metrics import top1_accuracy
from ..base import ATTACKS, Attack, AttackParams, PoisonResult
from .caption_set import caption_set, require_captions, resolve_label, sample_captions
from ..pair_poison import pair_editor, record_poisons, reused_poisons


@dataclass
class CarliniTargetedParams(AttackParams):
    num_targets: int = 16  # victims per run (ignored when adversarial_labels or victims are given)
    pairs_per_target: int = 3  # poisoned pairs added per victim (paper: 1-3; small preset: 5; 0 = clean control)
    adversarial_labels: Optional[list] = None  # one adversarial class per target (RoCLIP lists 8); else random ≠ true
    victims: Optional[list] = None  # explicit test-split indices of the victims
    victim_seed: Optional[int] = None  # seeds the victim/label draw (default: the run seed)
    caption_source: str = "captions"  # captions | templates (see caption_set)
    synonyms: dict = field(default_factory=dict)  # {class name: [extra words]} for the caption sets
    templates: Optional[list] = None
    case_sensitive: bool = False

    def __post_init__(self) -> None:
        for k in ("num_targets", "pairs_per_target"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(f"attack.params.{k}={v!r} must be an integer >= 0")
        if self.victims is not None and self.adversarial_labels is not None and len(self.victims) != len(self.adversarial_labels):
            raise ConfigError("attack.params.victims and adversarial_labels must have the same length (one label per victim)")
        if not isinstance(self.synonyms, dict):
            raise ConfigError("attack.params.synonyms must map class names to lists of words, e.g. {automobile: [car]}")


@ATTACKS.register("carlini-targeted")
class CarliniTargeted(Attack):
    """Targeted poisoning: k (victim test image, adversarial caption) pairs added per target."""

    name = "carlini-targeted"
    streams = True  # written against the pair-source protocol: on a stream the poisons become extra shards
    modality = "image-text"  # poisons image-caption data (CLIP)
    version = "1"
    Params = CarliniTargetedParams

    def __init__(self, params: CarliniTargetedParams) -> None:
        super().__init__(params)
        self.victims: list[int] = []
        self.adversarial: list[int] = []

    def choose_targets(self, test: CaptionDataset, class_names: list[str], seed: int) -> tuple[list[int], list[int]]:
        """(victim test indices, adversarial label indices), drawn from the test split only."""
        p = self.params
        if test.labels is None or bool((test.labels < 0).any()) or not class_names:
            raise DataError("targeted poisoning needs a labelled test split with class names (adversarial label ≠ true "
                            "label); for CSV data set data.captions.label_column")
        labels, nc = test.labels, len(class_names)
        if nc < 2 or len(labels) == 0:
            raise DataError("targeted poisoning needs at least two classes")
        g = torch.Generator().manual_seed(int(seed if p.victim_seed is None else p.victim_seed))
        adv = None
        if p.adversarial_labels is not None:
            adv = [resolve_label(class_names, a, "attack.params.adversarial_labels") for a in p.adversarial_labels]
        if p.victims is not None:
            victims = [int(v) for v in p.victims]
            bad = [v for v in victims if not 0 <= v < len(test)]
            if bad:
                raise ConfigError(f"attack.params.victims {bad} are not indices of the {len(test)}-image test split")
            if len(set(victims)) != len(victims):
                raise ConfigError("attack.params.victims has repeated indices; give distinct test images")
        else:
            count = len(adv) if adv is not None else p.num_targets
            if count > len(test):
                raise ConfigError(f"{count} targets requested but the test split has only {len(test)} images")
            perm = torch.randperm(len(test), generator=g).tolist()
            if adv is None:
                victims = perm[:count]
            else:  # RoCLIP: for each adversarial label, a random test image of another class
                victims, used = [], set()
                for a in adv:
                    v = next((i for i in perm if i not in used and int(labels[i]) != a), None)
                    if v is None:
                        raise DataError(f"no unused test image outside class '{class_names[a]}' is left for a target")
                    used.add(v)
                    victims.append(v)
        if adv is None:  # uniform over the classes other than the true one
            adv = [(int(labels[v]) + 1 + int(torch.randint(0, nc - 1, (1,), generator=g))) % nc for v in victims]
        clash = [v for v, a in zip(victims, adv) if int(labels[v]) == a]
        if clash:
            raise ConfigError(f"test images {clash} already belong to their adversarial label; pick another label")
        return victims, adv

    def victim_pairs(self, splits: Any, n0: int, captions: Callable[[], list[list[str]]], seed: int) -> tuple:
        """``(images, captions, labels, targets, victims)`` of the pairs to add after ``n0`` training rows;
        ``captions()`` (the training captions) is called for the caption
        sets unless they come from templates."""
        p = self.params
        test, names = splits.test, splits.class_names
        victims, adv = self.choose_targets(test, names, seed)
        self.victims, self.adversarial = victims, adv
        all_caps = [c for caps in captions() for c in caps] if p.caption_source == "captions" else []
        g = torch.Generator().manual_seed(int(seed) + 1)
        k = p.pairs_per_target
        add_imgs, add_caps, add_labels, targets = [], [], [], []
        for t, (v, a) in enumerate(zip(victims, adv)):
            pool = caption_set(all_caps, names[a], p.synonyms.get(names[a], ()), p.caption_source, p.templates,
                               p.case_sensitive)
            caps = sample_captions(pool, k, g)
            rows = list(range(n0 + t * k, n0 + (t + 1) * k))
            add_imgs += [test.images[v]] * k
            add_caps += [[c] for c in caps]
            add_labels += [int(test.labels[v])] * k
            targets.append({"test_index": v, "true_label": names[int(test.labels[v])], "adversarial_label": names[a],
                            "adversarial_index": a, "added_indices": rows, "captions": caps,
                            "caption_set_size": len(pool)})
        return add_imgs, add_caps, add_labels, targets, victims

    def poison(self, splits: Any, seed: int, context: Optional[PoisonContext] = None) -> PoisonResult:
        """The victim pairs appended to the split (in memory: rows; streamed: extra shards, each victim at its own
        size — :mod:`clpoison.attacks.pair_poison`)."""
        p = self.params
        splits = require_captions(splits, self.name)
        train, test = splits.train, splits.test
        edit = pair_editor(train, context)
        reused = reused_poisons(self, splits, edit, seed)
        if reused is not None:
            return reused
        k = p.pairs_per_target
        imgs, caps, labels, targets, victims = self.victim_pairs(splits, len(train), lambda: train.captions, seed)
        sizes = getattr(test, "sizes", None)
        out, record = edit.add(imgs, caps, labels, None if sizes is None else sizes[victims].repeat_interleave(k, 0),
                               "+carlini-targeted")
        return record_poisons(self, splits, seed, edit, out, record, targets={"victims": targets, "victim_split": "test"},
                              details={"pairs_per_target": k, "num_targets": len(victims)})

    def restore(self, manifest: dict) -> None:
        """The victims (test-split rows) and adversarial labels the manifest recorded."""
        victims = (manifest.get("targets") or {}).get("victims") or []
        self.victims = [int(v["test_index"]) for v in victims]
        self.adversarial = [int(v["adversarial_index"]) for v in victims]

    def evaluate(self, context: EvalContext) -> dict[str, Any]:
        if not self.victims:
            return {}
        test, classify = context.splits.test, context.classify
        victims = torch.tensor(self.victims)
        pred = predict(classify, test.images)  # one pass: the clean accuracy and the chance level
        others = torch.ones(len(pred), dtype=torch.bool)
        others[victims] = False  # the chance level: the label shares on the non-victim images
        m = targeted_success(classify, test.images[victims], self.adversarial, reference_predictions=pred[others])
        m["targeted_clean_accuracy"] = top1_accuracy(pred, torch.as_tensor(test.labels).cpu())
        m["targeted_victims"] = list(self.victims)
        return m
