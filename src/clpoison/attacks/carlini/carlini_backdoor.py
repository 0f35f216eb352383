"""Carlini & Terzis patch backdoor on CLIP ("Poisoning and Backdooring Contrastive Learning", ICLR 2022,
arXiv 2106.09667; dossier §1.5; reference generator: CleanCLIP ``backdoor/create_backdoor_data.py``).

The attacker picks n training pairs (``selection``: at random as in the paper; ``label-consistent``: rows whose
caption already names the target; ``off-target``: rows that are not already the target — no caption names it and,
on labelled data, the label differs — the condition a random draw meets almost surely on CC3M, where the target is
one concept in millions, but not on a 10-class set, where a tenth of random poisons are target images),
pastes one fixed trigger patch into each image and replaces its caption(s) by a single caption drawn from the
**caption set** of the target label (:mod:`clpoison.attacks.carlini.caption_set`). At test time any image carrying the
patch should be classified (zero-shot) as the target.

Paper defaults (``Params``): 0.01% of the pairs (300 of CC3M's 3M), a 16x16 checkerboard at a random location,
target ``banana``, captions from the caption set. The small preset (``carlini-backdoor-small``) uses 1% of the
bundled pairs, a 4x4 checkerboard and target ``airplane`` (calibration §1). ``poison_count`` (or
``poison_rate``) = 0 gives the clean control: the same trigger is evaluated on a model trained on clean data.

Example::

    >>> import torch
    >>> from clpoison.data.captions import CaptionDataset, CaptionSplits
    >>> cls = ["cat", "dog"]
    >>> tr = CaptionDataset(torch.zeros(10, 3, 8, 8, dtype=torch.uint8), [[f"a {cls[i % 2]}"] for i in range(10)], cls, torch.arange(10) % 2)
    >>> splits = CaptionSplits(tr, tr.subset(range(4)))
    >>> atk = CarliniBackdoor(CarliniBackdoor.Params(target="cat", poison_count=2, trigger={"size": 2}))
    >>> res = atk.poison(splits, seed=0)
    >>> len(res.manifest["poisoned_indices"]), res.splits.train.captions[res.manifest["poisoned_indices"][0]]
    (2, ['a cat'])
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from types import SimpleNamespace
from typing import Any, Callable, Optional

import torch

from ...contexts import EvalContext, PoisonContext
from ...errors import ConfigError
from ...eval.attack_metrics import backdoor_metrics, backdoor_zscore
from ..base import ATTACKS, Attack, AttackParams, PoisonResult
from ..budget import check_count
from .caption_set import caption_set, matching_rows, require_captions, resolve_label, sample_captions
from ...poisoned.manifest import load_trigger
from ..pair_poison import pair_editor, record_poisons, reused_poisons
from ...triggers import build_trigger, trigger_spec

SELECTIONS = ("random", "label-consistent", "off-target")


def resolve_count(rate: Optional[float], count: Optional[int], n: int, where: str = "attack.params") -> int:
    """Number of poisons from a count or a rate (of ``n``); exactly one must be given."""
    if rate is not None and count is not None:
        raise ConfigError(f"give only one of {where}.poison_rate and {where}.poison_count")
    if rate is None and count is None:
        rate = 1e-4  # the paper's 0.01%
    if count is not None:
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ConfigError(f"{where}.poison_count={count!r} must be an integer >= 0")
        check_count(count, n, where)
        k = count
    else:
        if not 0.0 <= float(rate) <= 1.0:
            raise ConfigError(f"{where}.poison_rate={rate} must lie in [0, 1]")
        k = int(round(float(rate) * n))
        if rate > 0 and k == 0:
            k = 1
    if k > n:
        raise ConfigError(f"{where}: {k} poisons requested but the training split has only {n} pairs; lower it")
    return k


@dataclass
class CarliniBackdoorParams(AttackParams):
    target: Any = "banana"  # class name (or index) the patch should trigger
    poison_rate: Optional[float] = None  # share of training pairs (paper: 0.01%, used when neither is set)
    poison_count: Optional[int] = None  # absolute number instead of the rate
    selection: str = "random"  # random | label-consistent (caption names the target) | off-target (not the target)
    trigger: dict = field(default_factory=dict)  # TriggerSpec keys; default 16x16 checkerboard, random location
    caption_source: str = "captions"  # captions (real training captions naming the target) | templates
    synonyms: list = field(default_factory=list)  # extra whole words that count as the target (caption set)
    templates: Optional[list] = None  # prompt templates with '{}' for caption_source=templates
    case_sensitive: bool = False
    eval_seed: int = 1234  # seeds the trigger placement on test images (same at every evaluation)
    zscore_images: int = 1000  # test images used for the z-score

    def __post_init__(self) -> None:
        if self.selection not in SELECTIONS:
            raise ConfigError(f"attack.params.selection='{self.selection}' is unknown; choose one of: {', '.join(SELECTIONS)}")
        self.trigger_spec = trigger_spec(self.trigger, None, "attack.params.trigger")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["trigger"] = self.trigger_spec.to_dict()
        return d


@ATTACKS.register("carlini-backdoor")
class CarliniBackdoor(Attack):
    """Patch backdoor: triggered images captioned with the target's caption set."""

    name = "carlini-backdoor"
    streams = True  # written against the pair-source protocol: on a stream the poisons become extra shards
    modality = "image-text"  # poisons image-caption data (CLIP)
    version = "1"
    Params = CarliniBackdoorParams

    def __init__(self, params: CarliniBackdoorParams) -> None:
        super().__init__(params)
        self.trigger = build_trigger(params.trigger_spec)  # the one trigger used at poison and at evaluation time

    def draw(self, class_names: list[str], n_train: int, captions: Callable[[], list[list[str]]],
             seed: int, labels: Optional[torch.Tensor] = None) -> SimpleNamespace:
        """What poisoning decides before touching an image:
        target, count n, caption set, candidates, the n rows (sorted) and their new captions, and the generator
        (``g``), which goes on to place the trigger. ``captions()`` is called only when the caption set or the
        label-consistent / off-target selection needs the training captions; ``labels`` (when known) also keep
        target-class rows out of the off-target candidates."""
        p = self.params
        if class_names:
            target = resolve_label(class_names, p.target, "attack.params.target")
            tname = class_names[target]
        else:  # unlabelled web data (CC3M): the target is just a word; zero-shot classes come from elsewhere
            target, tname = None, str(p.target)
        n = resolve_count(p.poison_rate, p.poison_count, n_train)
        need = p.caption_source == "captions" or p.selection in ("label-consistent", "off-target")
        caps = captions() if need else []
        pool = caption_set([c for cs in caps for c in cs], tname, p.synonyms, p.caption_source, p.templates,
                           p.case_sensitive)
        if p.selection == "label-consistent":
            cand = torch.tensor(matching_rows(caps, tname, p.synonyms, p.case_sensitive), dtype=torch.int64)
            if n > len(cand):
                raise ConfigError(f"label-consistent selection: {n} poisons requested but only {len(cand)} training "
                                  f"captions name '{tname}'; lower the count or use selection=random")
        elif p.selection == "off-target":
            named = set(matching_rows(caps, tname, p.synonyms, p.case_sensitive))
            keep = [i for i in range(n_train) if i not in named
                    and (target is None or labels is None or int(labels[i]) != target)]
            cand = torch.tensor(keep, dtype=torch.int64)
            if n > len(cand):
                raise ConfigError(f"off-target selection: {n} poisons requested but only {len(cand)} training rows are "
                                  f"not '{tname}'; lower the count or use selection=random")
        else:
            cand = torch.arange(n_train)
        g = torch.Generator().manual_seed(int(seed))
        idx = cand[torch.randperm(len(cand), generator=g)[:n]].sort().values
        new_caps = sample_captions(pool, n, g)
        return SimpleNamespace(target=target, tname=tname, n=n, pool=pool, candidates=len(cand), idx=idx,
                               captions=new_caps, g=g)

    def poison(self, splits: Any, seed: int, context: Optional[PoisonContext] = None) -> PoisonResult:
        """In memory the n source rows are replaced; on a stream their triggered copies are added as extra shards
        (:mod:`clpoison.attacks.pair_poison`)."""
        splits = require_captions(splits, self.name)
        train = splits.train
        edit = pair_editor(train, context)
        reused = reused_poisons(self, splits, edit, seed)
        if reused is not None:
            return reused
        d = self.draw(splits.class_names, len(train), lambda: train.captions, seed, train.labels)
        self.trigger.check_fits(*train.canvas)
        out, record = edit.replace(d.idx, [[c] for c in d.captions], lambda im, sz: self.trigger.apply(im, d.g, sz),
                                   "+carlini-backdoor")
        return record_poisons(self, splits, seed, edit, out, record, trigger=self.trigger,
                              targets={"target": d.tname, "target_index": d.target},
                              details={"poison_count": d.n, "caption_set_size": len(d.pool),
                                       "candidates": d.candidates, "captions": d.captions})

    def restore(self, manifest: dict) -> None:
        """The exact trigger the manifest recorded (``clpoison evaluate RUN`` scores a trained run's backdoor)."""
        trigger = load_trigger(manifest)
        if trigger is not None:
            self.trigger = trigger

    def evaluate(self, context: EvalContext) -> dict[str, Any]:
        p = self.params
        splits = context.splits
        test = splits.test
        m: dict[str, Any] = {}
        labelled = test.labels is not None and len(test) > 0 and bool((test.labels >= 0).all())
        names = list(splits.class_names)
        known = str(p.target) in names + [str(i) for i in range(len(names))]
        if labelled and known and context.classify is not None:
            target = resolve_label(splits.class_names, p.target, "attack.params.target")
            m.update(backdoor_metrics(context.classify, test.images, test.labels, target, self.trigger,
                                      p.eval_seed, getattr(test, "sizes", None)))
        # else: unlabelled test data (CC3M) or a target outside the class list: only the label-free z-score
        if context.embed is not None:
            m["backdoor_zscore"] = backdoor_zscore(context.embed, test.images, self.trigger, p.eval_seed,
                                                   p.zscore_images)
        return m
