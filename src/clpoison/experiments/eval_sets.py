"""Evaluation sets separate from the training data (``eval.sets``): the web-caption protocol of the CLIP poisoning
papers — pretrain on *unlabelled* image–caption pairs, measure retrieval on a caption test split and zero-shot,
backdoor ASR and targeted success on a *labelled* image set.

``eval.sets`` maps a key to a set::

    eval:
      sets:
        captions: {data: captions-csv, path: test.csv}          # retrieval (captions), zero-shot if it has labels
        cifar10:  {data: cifar10-subset, split: test}            # labelled images: zero-shot, probes, attacks
      attack_set: cifar10                                        # default: the first labelled set

Each set is loaded at the run's image size and evaluated on its own, under its key in ``results.json["eval_sets"]``:
``zeroshot_top1`` (labelled sets: the set's class names, the run's prompt templates), ``recall_at_K_*`` (sets with
real captions), ``knn_top1`` / ``linear_top1`` (labelled image sources: fitted on the source's train split, tested
on the named split), and the same metrics of the untrained model of the same architecture (``*_random_init``,
with ``eval.random_init_control``). The **attack set** (``eval.attack_set``, else the first labelled set) replaces
the run's test split for the attacks: the backdoor target class is resolved in its class names, targeted victims
are drawn from it, and the attack metrics (ASR, targeted success) are measured on it. Whatever cannot be measured
is reported (stderr and ``results.json["skipped"]``: ``{metric: reason}``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from ..data.captions import CaptionDataset
from ..data.captions.caption_labels import labels_from_captions
from ..data.captions.caption_readers import FILE_READERS, CaptionDataConfig
from ..data.datasets import ImageDataset
from ..errors import ConfigError, DataError
from ..utils.schema import from_dict
from .sources import load_image_source, resolve_source


@dataclass
class EvalSetSpec:
    """One entry of ``eval.sets``."""

    data: str = ""  # a source name (cifar10-subset, npz, captions-csv, ...) or a path (.csv/.tsv/.tar/.npz/folder)
    path: Optional[str] = None  # the path of a named source
    split: str = "test"  # test | train (image sources); a caption file is read whole
    limit: Optional[int] = None  # the first N images
    label_column: Optional[str] = None  # caption CSV: the column of class names (zero-shot / attacks on it)
    image_column: str = "filepath"
    caption_column: str = "title"
    separator: Optional[str] = None
    probe: bool = True  # image sources: kNN + linear probe fitted on the source's train split
    class_names: Optional[list] = None  # caption files without labels: keep the images whose caption names one of these
    synonyms: dict = field(default_factory=dict)  # {class name: [other words for it]} for class_names

    def __post_init__(self) -> None:
        if not self.data:
            raise ConfigError("each eval.sets entry needs data: a source name or a path (e.g. {data: cifar10-subset})")
        if self.split not in ("test", "train"):
            raise ConfigError(f"eval.sets: split='{self.split}' unknown; choose test or train")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"eval.sets: limit={self.limit} must be a positive integer (or null)")
        if self.class_names is not None:
            if self.label_column is not None:
                raise ConfigError("eval.sets: give label_column (labels in the file) or class_names (labels read from "
                                  "the captions), not both")
            if len(self.class_names) < 2 or not all(isinstance(c, str) and c.strip() for c in self.class_names):
                raise ConfigError("eval.sets: class_names must list at least two class names, e.g. [cat, dog]")
        if not isinstance(self.synonyms, dict) or (self.synonyms and self.class_names is None):
            raise ConfigError("eval.sets: synonyms maps class names to other words, e.g. {automobile: [car, cars]}, "
                              "and needs class_names")


@dataclass
class EvalSet:
    """A loaded evaluation set: images with labels and/or captions, and the labelled split a probe is fitted on."""

    key: str
    data: CaptionDataset  # template captions when ``captions`` is False
    captions: bool  # real captions (retrieval) or none
    probe_train: Optional[ImageDataset] = None

    @property
    def labelled(self) -> bool:
        d = self.data
        return bool(d.class_names) and d.labels is not None and len(d) > 0 and bool((d.labels >= 0).all())


def parse_sets(sets: Any) -> dict[str, EvalSetSpec]:
    if not sets:
        return {}
    if not isinstance(sets, dict):
        raise ConfigError("eval.sets must map a key to a set, e.g. {cifar10: {data: cifar10-subset}}")
    out = {}
    for key, spec in sets.items():
        if isinstance(spec, str):
            spec = {"data": spec}
        if not isinstance(spec, dict):
            raise ConfigError(f"eval.sets.{key} must be a mapping such as {{data: cifar10-subset}}")
        out[str(key)] = from_dict(EvalSetSpec, spec, f"eval.sets.{key}.")
    return out


def _limit(ds: Any, n: Optional[int]) -> Any:
    return ds if n is None or n >= len(ds) else ds.subset(torch.arange(n))


def load_eval_set(key: str, spec: EvalSetSpec, image_size: int, seed: int = 0) -> EvalSet:
    name, path = resolve_source(spec.data, spec.path)
    if name in FILE_READERS:
        cfg = CaptionDataConfig(image_column=spec.image_column, caption_column=spec.caption_column,
                                label_column=spec.label_column, separator=spec.separator)
        ds, _ = FILE_READERS[name](path, cfg, image_size, key)
        if spec.class_names is not None:
            ds = labelled_by_captions(ds, key, [str(c) for c in spec.class_names], spec.synonyms)
        return EvalSet(key, _limit(ds, spec.limit), True)
    splits = load_image_source(name, path, seed, image_size)
    img = _limit(splits.test if spec.split == "test" else splits.train, spec.limit)
    caps = [[f"a photo of a {img.class_names[int(y)]}."] for y in img.labels.tolist()]
    ds = CaptionDataset(img.images, caps, list(img.class_names), img.labels.clone(), key, img.sizes)
    probe = splits.train if spec.probe and spec.split == "test" else None
    return EvalSet(key, ds, False, probe)


def labelled_by_captions(ds: CaptionDataset, key: str, class_names: list[str], synonyms: dict) -> CaptionDataset:
    """The images whose captions name exactly one of ``class_names`` (:func:`~clpoison.data.captions.caption_labels.
    labels_from_captions`), labelled with it; the others (no class named, or several) are left out."""
    labels = labels_from_captions(ds.captions, class_names, synonyms)
    keep = torch.nonzero(labels >= 0).view(-1)
    if len(keep) < 2:
        raise DataError(f"eval.sets.{key}: only {len(keep)} of {len(ds)} captions name exactly one of the class names "
                        f"({', '.join(class_names)}); add synonyms or use a set with labels")
    out = ds.subset(keep)
    out.class_names, out.labels = list(class_names), labels[keep]
    return out


def load_eval_sets(sets: Any, attack_set: Optional[str], image_size: int, seed: int = 0
                   ) -> tuple[dict[str, EvalSet], Optional[str]]:
    """The loaded sets and the key of the attack set (``attack_set``, else the first labelled set, else None)."""
    specs = parse_sets(sets)
    loaded = {k: load_eval_set(k, s, image_size, seed) for k, s in specs.items()}
    if attack_set is not None:
        if attack_set not in loaded:
            raise ConfigError(f"eval.attack_set='{attack_set}' is not a key of eval.sets ({', '.join(loaded) or 'none'})")
        if not loaded[attack_set].labelled:
            raise ConfigError(f"eval.attack_set='{attack_set}' has no labels; name a labelled set (or give the "
                              "caption file a label_column)")
        return loaded, attack_set
    return loaded, next((k for k, s in loaded.items() if s.labelled), None)
