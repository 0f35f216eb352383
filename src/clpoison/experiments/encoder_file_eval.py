"""``clpoison evaluate`` of an encoder file rather than a run's checkpoint: a clpoison ``encoder.safetensors``
(+ ``encoder.json``), a torchvision-layout ResNet state dict or an open_clip model state dict (its image tower;
``model.heads=`` / ``model.activation=quick_gelu`` where the weights need them) trained by another framework
(:func:`clpoison.models.encoder_file.load_encoder`). The encoder is frozen and scored by kNN and the linear probe
on labelled image data, exactly as a run scores its own encoder (:func:`clpoison.eval.encoder_eval.evaluate_encoder`).

The config is the run's snapshot stored in ``encoder.json`` when there is one, else the ``simclr-small`` preset
(bundled CIFAR-10 subset); ``key=value`` overrides select other data (``data.name=imagefolder data.path=DIR``) or
preprocessing (``augment.out_size``, ``augment.mean``, ``augment.std``). ``encoder.json``'s preprocessing is used
unless overridden. With ``--manifest`` (a backdoor export's ``manifest.json``) the backdoor attack success rate
is scored too: the recorded trigger is applied to the test images (the attack's ``eval_seed``) and the
classifier fitted on clean features (linear probe) is asked for the target class.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

from ..poisoned.manifest import load_trigger, read_manifest
from ..errors import ConfigError
from ..eval.attack_metrics import backdoor_metrics
from ..eval.encoder_eval import evaluate_encoder, feature_classifier
from ..models.encoder_file import load_encoder
from ..utils.device import resolve_device
from .config import ExperimentConfig, build_config
from .tasks.image import ImageTask

DEFAULT_PRESET = "simclr-small"


def _given(overrides: Sequence[str], key: str) -> bool:
    return any(o.split("=", 1)[0].strip() == key for o in overrides)


ADAPTER_KEYS = {"model.heads": int, "model.activation": str}  # read by the open_clip adapter only


def _adapter_options(overrides: Sequence[str]) -> tuple[list[str], dict[str, Any]]:
    """``(overrides for the config, options for the foreign-weights adapters)``: ``model.stem_stride`` goes to both,
    ``model.heads`` / ``model.activation`` (open_clip towers) to the adapter only."""
    rest, model = [], {}
    for o in overrides:
        key, _, value = o.partition("=")
        key, value = key.strip(), value.strip()
        if key in ADAPTER_KEYS:
            try:
                model[key.split(".", 1)[1]] = ADAPTER_KEYS[key](value)
            except ValueError:
                raise ConfigError(f"{key}={value!r} is not an integer; give e.g. {key}=8") from None
            continue
        if key == "model.stem_stride" and value.isdigit():
            model["stem_stride"] = int(value)
        rest.append(o)
    return rest, model


def evaluate_encoder_file(path: str | Path, overrides: Sequence[str] = (), manifest: Optional[str | Path] = None
                          ) -> tuple[dict[str, float], ExperimentConfig, dict[str, Any]]:
    """``(metrics, config, encoder spec)``: kNN and linear-probe top-1 of the encoder at ``path``; with a poison
    ``manifest`` (``clpoison poison``'s ``manifest.json``) also the backdoor ASR of its trigger and target."""
    overrides, model = _adapter_options(overrides)
    encoder, spec = load_encoder(path, model if model else None)
    base = dict(spec["config"]) if isinstance(spec.get("config"), dict) else {"preset": DEFAULT_PRESET}
    pre = spec.get("preprocessing") or {}
    for key, name in (("size", "out_size"), ("mean", "mean"), ("std", "std")):
        if key in pre and not _given(overrides, f"augment.{name}"):
            overrides.append(f"augment.{name}={pre[key]}")
    if spec.get("method") == "clip" or base.get("method", {}).get("name") == "clip":
        base.pop("method", None)  # only the image tower is scored: kNN / linear probe on labelled images
        base.pop("attack", None)
        base.pop("defense", None)
        base = {"preset": DEFAULT_PRESET, **{k: v for k, v in base.items() if k in ("seed", "eval", "augment", "data")}}
    cfg = build_config(base, overrides)
    task = ImageTask(cfg, resolve_device(cfg.device))
    splits = task.load()
    metrics, extras = evaluate_encoder(encoder.to(task.device), splits, task.transform(), task.device, cfg.eval)
    if manifest is not None:
        metrics.update(_backdoor(encoder, splits, extras, task, cfg, Path(manifest)))
    return metrics, cfg, spec


def _backdoor(encoder: Any, splits: Any, extras: dict, task: Any, cfg: ExperimentConfig, path: Path) -> dict:
    """ASR of the manifest's trigger towards its target class, through the linear probe (kNN without one)."""
    m = read_manifest(path)
    trigger = load_trigger(m)
    target = (m.get("targets") or {}).get("target")
    if trigger is None or target is None:
        raise ConfigError(f"manifest '{path}' records no trigger and target class; backdoor ASR needs a backdoor "
                          "attack's manifest (carlini-backdoor, corruptencoder, ssl-backdoor, ctrl, ...)")
    test = splits.test
    classifier = extras.get("probe") or extras["knn"]
    classify = feature_classifier(encoder, task.transform(), task.device, cfg.eval.batch_size, classifier)
    seed = int((m.get("params") or {}).get("eval_seed", 0))
    out = backdoor_metrics(classify, test.images, test.labels, test.class_index(target), trigger, seed,
                           getattr(test, "sizes", None))
    return {"backdoor_target": target, **out}
