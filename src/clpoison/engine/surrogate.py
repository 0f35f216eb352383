"""The attacker's own encoder: an image-SSL method the attacker trains on the data it poisons (Contrastive
Poisoning's crafting model; the no-label backdoors' feature extractor), described in an attack's params as

.. code-block:: yaml

    attacker:
      method: {name: simclr, params: {temperature: 0.5}}   # simclr | mocov2 | byol (image, contrastive)
      model: {arch: resnet18, width: 64, stem_stride: 1}
      augment: {crop_scale: [0.2, 1.0], jitter: [0.4, 0.4, 0.4, 0.1], jitter_p: 0.8, gray_p: 0.2}
      train: {optimizer: sgd, lr: 0.5, lr_scaling: none, momentum: 0.9, weight_decay: 1.0e-4}

and trained through the one engine (:class:`~clpoison.engine.trainer.Trainer`). The defaults are Contrastive
Poisoning's official SimCLR recipe (``algorithms.md`` §4.4): CIFAR ResNet-18, τ 0.5, SGD lr 0.5, wd 1e-4, cosine to
lr·1e-3 with no warm-up, kornia SimCLR augmentation without blur.

Example::

    >>> s = Surrogate.from_dict({"model": {"arch": "convnet", "width": 8}}, "attack.params.attacker")
    >>> s.build_method().name, s.train_config(epochs=3, batch_size=64).lr
    ('simclr', 0.5)
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..data.augment import AugmentConfig
from .trainer import TrainConfig
from ..errors import ConfigError
from ..methods import METHODS
from ..methods.base import Method
from ..methods.build import build_method
from ..models import check_backbone
from ..utils.io import atomic_write_json, dumps_json
from ..utils.schema import from_dict

_CP_TRAIN = {"optimizer": "sgd", "lr": 0.5, "lr_scaling": "none", "momentum": 0.9, "weight_decay": 1e-4,
             "warmup_epochs": 0.0, "min_lr_ratio": 1e-3}


@dataclass
class Surrogate:
    method: dict = field(default_factory=lambda: {"name": "simclr", "params": {"temperature": 0.5}})
    model: dict = field(default_factory=lambda: {"arch": "resnet18", "width": 64, "stem_stride": 1})
    augment: dict = field(default_factory=dict)  # AugmentConfig fields (defaults: SimCLR's, no blur)
    train: dict = field(default_factory=dict)  # TrainConfig fields except epochs / batch_size
    where: str = "attacker"

    @classmethod
    def from_dict(cls, d: dict, where: str) -> "Surrogate":
        """Validated spec; every error is one ConfigError line naming ``where.KEY``."""
        d = dict(d or {})
        unknown = sorted(set(d) - {"method", "model", "augment", "train"})
        if unknown:
            raise ConfigError(f"unknown key(s) {', '.join(f'{where}.{u}' for u in unknown)}; valid keys: method, model, augment, train")
        s = cls(**{k: dict(v) if isinstance(v, dict) else v for k, v in d.items()}, where=where)
        for k in ("method", "model", "augment", "train"):
            if not isinstance(getattr(s, k), dict):
                raise ConfigError(f"{where}.{k} must be a mapping of key: value")
        for k, valid in (("method", {"name", "params"}), ("model", {"arch", "width", "stem_stride"})):
            bad = sorted(set(getattr(s, k)) - valid)
            if bad:
                raise ConfigError(f"unknown key(s) {', '.join(f'{where}.{k}.{b}' for b in bad)}; valid keys: "
                                  f"{', '.join(sorted(valid))}")
        name = s.method.get("name", "simclr")
        cls_ = METHODS.get(name)
        if cls_.modality != "image":
            raise ConfigError(f"{where}.method.name='{name}' is not an image contrastive method; choose simclr, mocov2 or byol")
        s.method = {"name": name, "params": dict(s.method.get("params") or {})}
        METHODS.params(name, s.method["params"], f"{where}.method.params")
        for k in ("epochs", "batch_size"):
            if k in s.train:
                raise ConfigError(f"{where}.train.{k} is set by the attack (rounds / batch_size), not here")
        s.augment_config()
        s.train_config(1, 1)
        m = s.model_config()
        check_backbone(m["arch"], m["width"], m["stem_stride"], f"{where}.model")
        return s

    def model_config(self) -> dict:
        """The backbone spec with its defaults (a CIFAR ResNet-18 of width 64)."""
        return {"arch": "resnet18", "width": 64, "stem_stride": 1, **self.model}

    def augment_config(self) -> AugmentConfig:
        try:
            return from_dict(AugmentConfig, self.augment, f"{self.where}.augment.")
        except ConfigError as e:
            raise ConfigError(f"{self.where}.augment: {e}") from None

    def train_config(self, epochs: int, batch_size: int, **overrides: Any) -> TrainConfig:
        try:
            cfg = from_dict(TrainConfig, {**_CP_TRAIN, **self.train, "epochs": epochs, "batch_size": batch_size},
                            f"{self.where}.train.")
        except ConfigError as e:
            raise ConfigError(f"{self.where}.train: {e}") from None
        return replace(cfg, **overrides)

    def build_method(self) -> Method:
        return build_method(self.method["name"], self.method["params"], self.model_config())


def resumable_dir(work_dir: Path | str, snapshot: dict, name: str) -> Path:
    """``work_dir`` ready for an attacker's resumable training: kept when its ``name`` file records exactly
    ``snapshot`` (the same crafting / pretraining, so the engine resumes its checkpoint), emptied otherwise."""
    work_dir = Path(work_dir)
    cfg_path = work_dir / name
    if work_dir.exists() and (not cfg_path.exists() or json.loads(cfg_path.read_text()) != json.loads(dumps_json(snapshot))):
        shutil.rmtree(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(cfg_path, snapshot)
    return work_dir
