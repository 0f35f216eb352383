"""``clpoison scan`` as a library call: load CLIP models (a reference model trained without the poisons and/or the
trained checkpoint), read exactly the pairs named, check them against a manifest, score, rank and write the CSV
(:mod:`clpoison.audit.data_scan`). The CLI and ``benchmarks/captions_protocol.py`` both call
:func:`scan_data`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

from ..poisoned.manifest import manifest_poisons, read_manifest
from ..audit.data_scan import check_manifest_matches, pair_scores, scan_to_csv
from ..eval.density import DEFAULT_K, check_direction
from ..errors import ConfigError
from .config import build_config
from .sources import load_scan_data
from .tasks import task_for


def pretrained_checkpoint(path: str | Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """A checkpoint-like dict of a pretrained CLIP — a Hugging Face CLIP directory or an open_clip state dict
    (preset ``clip-finetune`` with ``model.init``, no trained weights: ``model`` is None, so the task builds the
    model from ``path``)."""
    cfg = build_config({"preset": "clip-finetune"}, [f"model.init={Path(path).resolve()}", *overrides])
    return {"config": cfg.to_dict(), "model": None, "method": cfg.method.name}


def load_clip(arg: str | Path) -> tuple[Path, Any, Any, Any]:
    """``(path, config, method, task)`` of a CLIP run directory, its checkpoint (loaded weights_only), its
    ``clip.safetensors`` (:mod:`clpoison.models.clip_file`) or a pretrained CLIP (:mod:`clpoison.models.pretrained`)."""
    from ..engine.checkpoint import read_checkpoint
    from ..run_folder import checkpoint_file
    from ..utils.device import resolve_device

    from ..models.clip_file import is_clip_model, read_clip_model
    from ..models.pretrained import is_pretrained_clip

    path = Path(arg)
    if is_pretrained_clip(path):  # a Hugging Face CLIP directory or an open_clip state dict: no fine-tuned weights
        ckpt = pretrained_checkpoint(path)
    elif is_clip_model(path):  # clip.safetensors + clip.json: both towers, tensors only
        ckpt = read_clip_model(path)
    else:
        path = checkpoint_file(path, fix="pass a CLIP run directory, its checkpoint.pt or its clip.safetensors")
        ckpt = read_checkpoint(path)
    if not isinstance(ckpt.get("config"), dict) or not isinstance(ckpt.get("model"), (dict, type(None))) or \
            "method" not in ckpt:
        raise ConfigError(f"checkpoint '{path}' lacks a model/config; is it a clpoison CLIP checkpoint? "
                          "(an encoder.safetensors has no text tower, so it cannot score captions: pass the run's "
                          "clip.safetensors)")
    try:
        cfg = build_config(dict(ckpt["config"]), [])
    except Exception as e:
        raise ConfigError(f"checkpoint '{path}' cannot be read ({type(e).__name__}); is it a clpoison CLIP checkpoint?") from None
    task = task_for(cfg, resolve_device(cfg.device))
    if task.modality != "image-text":
        raise ConfigError(f"checkpoint '{path}' is a '{cfg.method.name}' run; `clpoison scan` needs a CLIP checkpoint")
    return path, cfg, task.method_from_checkpoint(ckpt, f"checkpoint '{path}'"), task


def scan_data(out: str | Path, data: str, *, checkpoint: Optional[str] = None, reference: Optional[str] = None,
              manifest: Optional[str] = None, data_path: Optional[str] = None, image_size: Optional[int] = None,
              seed: int = 0, label_column: Optional[str] = None, test_path: Optional[str] = None,
              caption_options: Optional[dict] = None, split: str = "train", risky_fraction: Optional[float] = None,
              top_k: Optional[int] = None, threshold: Optional[float] = None,
              scores: Sequence[str] = ("similarity",), k: int = DEFAULT_K,
              neighbour_batch: Optional[int] = None, direction: str = "high") -> dict[str, Any]:
    """Scan the pairs of ``data`` into the CSV ``out``; returns the summary. ``scores`` (the first ranks) are of the
    ``reference`` model when given (the checkpoint's similarities and ROC-AUC are then an extra column /
    ``roc_auc_checkpoint``); density scores use ``k`` neighbours from the whole set, or from seeded batches of
    ``neighbour_batch`` (the official setting; :mod:`clpoison.eval.density`)."""
    if not checkpoint and not reference:
        raise ConfigError("`clpoison scan` needs a CLIP model: a run directory / checkpoint.pt, or --reference MODEL")
    check_direction(direction)
    if direction != "high" and all(x == "similarity" for x in scores):
        raise ConfigError(f"--direction {direction} turns density scores; add one (--score kdist dao slof lid)")
    man = None
    if manifest:
        if not Path(manifest).exists():
            raise ConfigError(f"manifest '{manifest}' does not exist; check the path")
        man = read_manifest(manifest)
    models = {k: load_clip(v) for k, v in (("reference", reference), ("checkpoint", checkpoint)) if v}
    cfg0 = next(iter(models.values()))[1]
    size = image_size or cfg0.data.image_size or cfg0.augment.out_size
    # with a manifest the data is read at its native size (as exported) so that its fingerprint can be checked
    ds, where = load_scan_data(data, data_path, image_size if man else size, seed, label_column, test_path,
                               caption_options, split, export_labels=man is not None)
    poisons = None
    if man is not None:
        check_manifest_matches(man, ds, where)
        poisons = manifest_poisons(man)
        if ds.sizes is not None:  # images of several sizes on a padded canvas: re-read at the model's size
            ds, where = load_scan_data(data, data_path, size, seed, label_column, test_path, caption_options, split)
    rank_by = next(iter(models))
    values: dict[str, Any] = {}
    owner = texts = None
    for name, (_, cfg, method, task) in models.items():
        values[name], owner, texts = pair_scores(method.model, method.tokenizer, ds, task.transform(),
                                                 method.params.context_length, task.device, cfg.eval.batch_size,
                                                 scores if name == rank_by else ("similarity",), k, neighbour_batch,
                                                 seed, direction)
    summary = scan_to_csv(out, values[rank_by], owner, texts, poisons, risky_fraction, top_k, threshold,
                          extra={n: v["similarity"] for n, v in values.items() if n != rank_by})
    if any(x != "similarity" for x in scores):
        summary["neighbours"] = {"k": k, "pool": f"batches of {neighbour_batch}" if neighbour_batch else "whole set",
                                 **({"direction": direction} if direction != "high" else {})}
    return {**summary, "ranked_by": rank_by, **{k: str(m[0]) for k, m in models.items()}, "csv": str(out)}
