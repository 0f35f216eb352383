"""Experiment configuration: a validated schema, YAML presets and ``key=value`` overrides.

A config is YAML. ``preset: NAME`` starts from a packaged preset (``clpoison/experiments/presets/NAME.yaml``,
see :func:`list_presets`), then the file's own keys, then command-line overrides (``train.epochs=5``) are merged
on top. Every key is checked against the schema below before any work starts: an unknown key, a wrong type or an
out-of-range value is a :class:`~clpoison.errors.ConfigError` naming the key and the valid choices.
"""

from __future__ import annotations

import copy
import re
import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from ..data.augment import AugmentConfig
from ..data.captions.caption_readers import CaptionDataConfig
from ..engine.trainer import TrainConfig
from ..errors import ConfigError
from ..utils.schema import from_dict, non_finite_key


@dataclass
class DataConfig:
    name: str = "cifar10-subset"
    path: Optional[str] = None
    image_size: Optional[int] = None
    train_limit: Optional[int] = None
    test_limit: Optional[int] = None
    max_resident_gb: float = 8.0  # imagefolder splits larger than this (as uint8) stream from disk
    stream_workers: int = 2  # streamed imagefolder splits: loader worker processes decoding batches (0: in-process)
    downstream_fraction: float = 0.0  # per class, this share of train is held out as the labelled probe set (NLB: 0.1)
    captions: CaptionDataConfig = field(default_factory=CaptionDataConfig)  # image–caption data (method: clip)
    train_per_class: Optional[int] = None  # a seeded class-balanced subset: this many training rows of each class
    train_subset: Optional[int] = None  # a seeded random subset of this many training rows (images or pairs)
    subset_seed: int = 0  # seeds train_per_class / train_subset (independent of the run seed)
    exclude_classes: list = field(default_factory=list)  # classes kept out of pretraining (probe/test keep them)

    def __post_init__(self) -> None:
        if self.train_per_class is not None and self.train_subset is not None:
            raise ConfigError("give only one of data.train_per_class and data.train_subset")
        for f in ("image_size", "train_limit", "test_limit", "train_per_class", "train_subset"):
            v = getattr(self, f)
            if v is not None and v < 1:
                raise ConfigError(f"data.{f}={v} must be a positive integer (or null)")
        if self.stream_workers < 0:
            raise ConfigError(f"data.stream_workers={self.stream_workers} must be >= 0 (0 = decode in the training process)")
        if not 0.0 <= self.downstream_fraction < 1.0:
            raise ConfigError(f"data.downstream_fraction={self.downstream_fraction} must lie in [0, 1) (NLB: 0.1)")
        if not isinstance(self.exclude_classes, list) or not all(isinstance(c, (str, int)) and not isinstance(c, bool)
                                                                  for c in self.exclude_classes):
            raise ConfigError(f"data.exclude_classes={self.exclude_classes!r} must be a list of class names or "
                              "indices, e.g. [airplane]")


@dataclass
class ModelConfig:
    arch: str = "resnet18"
    width: int = 64
    stem_stride: int = 1
    # CLIP: start from a pretrained CLIP (a Hugging Face CLIP directory or an open_clip state dict with both towers;
    # docs/audit.md); its architecture, tokenizer, image size and mean/std replace arch/width and method.params
    init: Optional[str] = None

    def __post_init__(self) -> None:
        if self.init is not None:
            if not str(self.init).strip():
                raise ConfigError("model.init is empty; give a pretrained CLIP's path or null")
            self.init = str(Path(self.init).expanduser().resolve())


@dataclass
class ComponentConfig:
    """A named registry entry with its parameters (method, attack, defense)."""

    name: str = "none"
    params: dict = field(default_factory=dict)


@dataclass
class EvalConfig:
    knn_k: int = 200
    knn_temperature: float = 0.1
    linear: bool = True
    linear_l2: float = 1e-4
    random_init_control: bool = True
    random_init_linear: bool = False  # image SSL: also the linear probe of the random-init encoder (availability attacks)
    batch_size: int = 512
    zeroshot_templates: Optional[list[str]] = None  # CLIP: prompt ensemble; null → the 18 OpenAI CIFAR templates
    retrieval_ks: list[int] = field(default_factory=lambda: [1, 5, 10])  # CLIP: recall@K on the test pairs
    every_epochs: int = 0  # >0: also evaluate (clean metrics + attack metrics) after every k-th epoch → history
    sets: dict = field(default_factory=dict)  # CLIP: evaluation sets apart from the training data (experiments/eval_sets.py)
    attack_set: Optional[str] = None  # the key of the labelled set the attacks use (default: the first labelled one)

    def __post_init__(self) -> None:
        if self.zeroshot_templates is not None and (not self.zeroshot_templates or any("{c}" not in t for t in self.zeroshot_templates)):
            raise ConfigError("eval.zeroshot_templates must be a non-empty list of prompts each containing '{c}' (e.g. 'a photo of a {c}.')")
        for t in self.zeroshot_templates or []:
            try:
                t.format(c="x")
            except (KeyError, IndexError, ValueError) as e:
                raise ConfigError(f"eval.zeroshot_templates: '{t}' has a field other than {{c}} ({type(e).__name__}: {e}); "
                                  "write literal braces as {{ }}") from None
        if not self.retrieval_ks or any(k < 1 for k in self.retrieval_ks):
            raise ConfigError(f"eval.retrieval_ks={self.retrieval_ks} must be a non-empty list of positive integers")
        if self.knn_k < 1:
            raise ConfigError(f"eval.knn_k={self.knn_k} must be >= 1")
        if self.knn_temperature <= 0:
            raise ConfigError(f"eval.knn_temperature={self.knn_temperature} must be > 0")
        if self.linear_l2 < 0:
            raise ConfigError(f"eval.linear_l2={self.linear_l2} must be >= 0")
        if self.batch_size < 1:
            raise ConfigError(f"eval.batch_size={self.batch_size} must be >= 1")
        if self.every_epochs < 0:
            raise ConfigError(f"eval.every_epochs={self.every_epochs} must be >= 0 (0 = only after the last epoch)")
        if self.sets:
            from .eval_sets import parse_sets

            parse_sets(self.sets)


PRETRAINED_METHODS = ("clip", "pretrained-clip", "hf-clip")  # the methods model.init may start


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    seed: int = 0
    device: str = "auto"
    deterministic: bool = True
    data: DataConfig = field(default_factory=DataConfig)
    attack: ComponentConfig = field(default_factory=ComponentConfig)
    defense: ComponentConfig = field(default_factory=ComponentConfig)
    method: ComponentConfig = field(default_factory=lambda: ComponentConfig("simclr"))
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not 0 <= self.seed < 2**63:
            raise ConfigError(f"seed={self.seed} must be an integer in [0, 2**63)")
        if self.model.init and self.method.name not in PRETRAINED_METHODS:
            raise ConfigError(f"model.init (a pretrained CLIP) is for CLIP runs; set method.name=clip (not "
                              f"'{self.method.name}') or drop model.init")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------------------------------
# building dataclasses from dicts, with type checks: clpoison.utils.schema


# ----------------------------------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads YAML 1.2 floats: ``1e-5`` and ``2e-3`` (no dot) are numbers, as users expect."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[0-9][0-9_]*[eE][-+]?[0-9]+|\.(?:inf|Inf|INF)|[-+]\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)

# presets, YAML, overrides


def presets_dir() -> Path:
    return Path(str(resources.files("clpoison.experiments") / "presets"))


def list_presets() -> list[str]:
    return sorted(p.stem for p in presets_dir().glob("*.yaml"))


def read_yaml(path: Union[str, Path]) -> dict:
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file '{p}' does not exist; check the path")
    if not p.is_file():
        raise ConfigError(f"config file '{p}' is a directory, not a YAML file; pass the config file")
    try:
        data = load_yaml(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        raise ConfigError(f"config file '{p}' is not valid YAML{'' if line is None else f' (line {line + 1})'}; fix its syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{p}' must hold a mapping of keys at the top level")
    return data


def load_preset(name: str) -> dict:
    p = presets_dir() / f"{name}.yaml"
    if not p.exists():
        raise ConfigError(f"unknown preset '{name}'; choose one of: {', '.join(list_presets())}")
    return read_yaml(p)


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "params":
            out[k] = deep_merge(out[k], v)
        elif isinstance(v, dict) and isinstance(out.get(k), dict) and k == "params":
            out[k] = {**out[k], **v}
        else:
            out[k] = copy.deepcopy(v)
    return out


def resolve_presets(data: dict) -> dict:
    """Expand ``preset:`` keys (presets may name presets) into one merged mapping."""
    data = dict(data)
    seen: list[str] = []
    while "preset" in data:
        name = data.pop("preset")
        if not isinstance(name, str):
            raise ConfigError(f"preset must be a name, got {name!r}")
        if name in seen:
            raise ConfigError(f"preset cycle: {' -> '.join(seen + [name])}")
        seen.append(name)
        base = load_preset(name)
        # a component swap (e.g. method.name changes) drops the preset's params for the old component
        for comp in ("method", "attack", "defense"):
            if isinstance(data.get(comp), dict) and isinstance(base.get(comp), dict):
                if "name" in data[comp] and data[comp]["name"] != base[comp].get("name"):
                    base[comp] = {}
        data = deep_merge(base, data)
    return data


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like key=value (e.g. train.epochs=5)")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"override '{item}' has an empty key; use e.g. train.epochs=5")
    try:
        value = load_yaml(raw) if raw.strip() != "" else None
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    data = copy.deepcopy(data)
    for item in overrides:
        path, value = parse_override(item)
        if path == ["preset"]:
            data = deep_merge(resolve_presets({"preset": value}), data)
            continue
        node = data
        for p in path[:-1]:
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"override '{item}': '{p}' is not a section")
            node = nxt
        node[path[-1]] = value
    return data


def build_config(data: Optional[dict] = None, overrides: Optional[list[str]] = None) -> ExperimentConfig:
    """Presets → file keys → overrides, validated into an :class:`ExperimentConfig`."""
    data = resolve_presets(data or {})
    data = resolve_presets(apply_overrides(data, overrides or []))
    bad = non_finite_key(data)  # the key that holds it, before any component reads it
    if bad:
        raise ConfigError(f"{bad} is not a finite number (NaN or infinite); give a finite value")
    cfg = from_dict(ExperimentConfig, data)
    check_label(cfg.name, "name")
    validate_components(cfg)
    return cfg


def check_label(value: Any, key: str) -> str:
    """``value`` if it is a label fit for a folder name (runs/NAME); a path (a separator, ``.``, ``..`` or another
    leading dot, a control character) is one ConfigError line naming ``key``."""
    text = str(value)
    if (not text or "/" in text or "\\" in text or text.startswith(".")
            or any(ord(c) < 32 for c in text) or len(text) > 200):
        raise ConfigError(f"{key}={text!r} must be a label (no /, no leading dot, up to 200 "
                          "characters), not a path; runs go to runs/NAME unless --out says otherwise")
    return text


def load_config(path: Optional[Union[str, Path]] = None, overrides: Optional[list[str]] = None) -> ExperimentConfig:
    return build_config(read_yaml(path) if path is not None else {}, overrides)


def validate_components(cfg: ExperimentConfig) -> None:
    """Check registry names and each component's parameters, so bad values fail before any work."""
    from ..attacks import ATTACKS
    from ..data.image_readers import SOURCES
    from ..data.views import VIEW_SAMPLERS
    from ..defenses import DEFENSES
    from ..methods import METHODS
    from ..models import BACKBONES

    method_cls = METHODS.get(cfg.method.name)
    check_modalities(cfg)
    if method_cls.modality == "image-text":
        from ..data.captions.caption_readers import caption_source_names

        if cfg.data.name not in caption_source_names():
            raise ConfigError(
                f"unknown caption dataset data.name='{cfg.data.name}' for method {cfg.method.name}; choose one of: "
                f"{', '.join(caption_source_names())}"
            )
        # captions-csv / captions-tar without data.path fail when the data is loaded (the first step), so that
        # the paper preset validates before a path is given
        tok = getattr(METHODS.params(cfg.method.name, cfg.method.params)[1], "tokenizer", None)
        if tok and not Path(tok).expanduser().is_file():
            raise ConfigError(f"method.params.tokenizer '{tok}' does not exist; give a tokenizer.json or null to train one")
        if cfg.data.captions.test_path and not Path(cfg.data.captions.test_path).expanduser().exists():
            raise ConfigError(f"data.captions.test_path '{cfg.data.captions.test_path}' does not exist; check the path")
    else:
        SOURCES.get(cfg.data.name)
        if cfg.eval.sets:
            raise ConfigError(f"eval.sets is for CLIP runs (method clip); method {cfg.method.name} evaluates on its "
                              "dataset's own test split")
    BACKBONES.get(cfg.model.arch)
    if cfg.model.width < 1 or cfg.model.stem_stride not in (1, 2):
        raise ConfigError("model.width must be >= 1 and model.stem_stride 1 or 2")
    VIEW_SAMPLERS.get(cfg.augment.sampler)
    for registry, comp in ((METHODS, cfg.method), (ATTACKS, cfg.attack), (DEFENSES, cfg.defense)):
        registry.params(comp.name, comp.params)
    if cfg.data.name in ("npz", "cifar", "imagefolder") and not cfg.data.path:
        raise ConfigError(f"data.name={cfg.data.name} needs data.path; set data.path=/path/to/data")
    if cfg.data.path and not any(c in cfg.data.path for c in "*?[{") and not Path(cfg.data.path).expanduser().exists():
        raise ConfigError(f"data.path '{cfg.data.path}' does not exist; check the path")


def check_modalities(cfg: ExperimentConfig) -> None:
    """The attack and the defense work on the data the method trains on (their ``modality``, ``any`` fits both):
    one ConfigError line naming the keys and the fix otherwise — checked from the names alone, before any data is
    read."""
    from ..attacks import ATTACKS
    from ..contexts import ANY
    from ..defenses import DEFENSES
    from ..methods import METHODS

    want = METHODS.get(cfg.method.name).modality
    for key, reg, name in (("attack", ATTACKS, cfg.attack.name), ("defense", DEFENSES, cfg.defense.name)):
        have = reg.get(name).modality
        if have not in (ANY, want):
            fits = [n for n in reg.names() if reg.get(n).modality in (ANY, want)]
            methods = [n for n in METHODS.names() if METHODS.get(n).modality == have]
            raise ConfigError(f"{key}.name={name} works on {have} data but method.name={cfg.method.name} trains on "
                              f"{want} data; use a {key} for {want} data ({', '.join(fits)}) or a {have} method "
                              f"({', '.join(methods)})")
