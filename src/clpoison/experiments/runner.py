"""The pipeline runner: dataset → attack → defense → pretrain → evaluate → results.

The modality-specific steps (load the data, build the method and its batch source, evaluate, the random-init
control, the attack-evaluation context) come from a *task* chosen by the method's ``modality``: :class:`ImageTask`
for image SSL (SimCLR, MoCo v2, BYOL), :class:`~clpoison.experiments.clip_task.ImageTextTask` for CLIP. Everything
else (output folder, config snapshot, attack/defense slots, checkpoint/resume, timings, results.json) is shared.

:func:`run_experiment` executes one validated :class:`ExperimentConfig` and writes into ``out``:

* ``results.json`` — ``{"metrics", "config", "timings", "environment", ...}``;
* ``checkpoint.pt`` — the training checkpoint (model, optimiser, RNG, ... — see the engine);
* ``metrics.jsonl`` — the training log; ``manifest.json`` when an attack ran.

Work happens in ``OUT.partial/`` which is renamed to ``OUT`` at the very end, so an interrupted run never leaves
something that looks finished; re-running the same command resumes from the partial checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from ..attacks import ATTACKS
from ..data.augment import EvalTransform, TwoViewAugment, make_sampler
from ..data.datasets import ImageSplits, limit, load_dataset
from ..data.loader import ResidentBatches, TwoViewBatches
from ..defenses import DEFENSES
from ..engine.trainer import CHECKPOINT_NAME, Trainer, min_conv_channels
from ..errors import ClpoisonError, ConfigError
from ..eval.features import extract_features
from ..eval.knn import KNNClassifier
from ..eval.linear import LinearProbe
from ..eval.metrics import top1_accuracy
from ..methods import METHODS
from ..models import build_backbone
from ..utils.device import resolve_device
from ..utils.io import atomic_write_json, dumps_json
from ..utils.seed import seed_everything
from .config import ExperimentConfig

RESULTS_NAME = "results.json"


def environment() -> dict[str, Any]:
    import kornia

    from .. import __version__

    env = {
        "clpoison": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "kornia": kornia.__version__,
        "platform": platform.platform(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


def load_splits(cfg: ExperimentConfig) -> ImageSplits:
    kwargs: dict[str, Any] = {"max_resident_bytes": int(cfg.data.max_resident_gb * 2**30)}
    if cfg.data.image_size is not None:
        kwargs["image_size"] = cfg.data.image_size
    splits = load_dataset(cfg.data.name, cfg.data.path, seed=cfg.seed, **kwargs)
    splits.train = limit(splits.train, cfg.data.train_limit)
    splits.test = limit(splits.test, cfg.data.test_limit)
    return splits


def build_method(cfg: ExperimentConfig):
    cls = METHODS.get(cfg.method.name)
    params = cls.Params.from_dict(cfg.method.params, "method.params")
    backbone = build_backbone(cfg.model.arch, cfg.model.width, cfg.model.stem_stride)
    return cls(backbone, params)


def evaluate_encoder(
    encoder: torch.nn.Module,
    splits: ImageSplits,
    cfg: ExperimentConfig,
    device: torch.device,
    linear: bool = True,
    prefix: str = "",
) -> tuple[dict[str, float], dict[str, Any]]:
    """kNN (and linear-probe) top-1 of a frozen encoder: train features on the clean labelled train split,
    test on the test split. Returns metrics and the fitted classifiers/features for attack evaluations."""
    tf = EvalTransform(cfg.augment.out_size, cfg.augment.mean, cfg.augment.std).to(device)
    kw = dict(transform=tf, batch_size=cfg.eval.batch_size, device=device)
    ftr = extract_features(encoder, splits.train.images, **kw)
    fte = extract_features(encoder, splits.test.images, **kw)
    nc = splits.train.num_classes
    knn = KNNClassifier(cfg.eval.knn_k, cfg.eval.knn_temperature).fit(ftr, splits.train.labels, nc)
    metrics = {f"{prefix}knn_top1": top1_accuracy(knn.predict(fte), splits.test.labels)}
    extras: dict[str, Any] = {"knn": knn, "train_features": ftr, "test_features": fte, "transform": tf}
    if linear and cfg.eval.linear:
        probe = LinearProbe(cfg.eval.linear_l2).fit(ftr, splits.train.labels, nc)
        metrics[f"{prefix}linear_top1"] = top1_accuracy(probe.predict(fte), splits.test.labels)
        extras["probe"] = probe
    return metrics, extras


def attack_context(
    encoder: torch.nn.Module, splits: Any, poisoned: Any, cfg: ExperimentConfig, device: torch.device, extras: dict
) -> dict[str, Any]:
    """What :meth:`Attack.evaluate` receives. The contract every pipeline (image SSL, CLIP) fulfils:

    * ``classify(images_uint8) -> LongTensor`` — the downstream classifier's predictions (linear probe on frozen
      features for image SSL; zero-shot for CLIP); used for CA and ASR so both come from one classifier;
    * ``embed(images_uint8) -> FloatTensor`` — L2-normalised encoder features (for embedding-level metrics);
    * ``splits`` (clean), ``poisoned`` (what was trained on), ``cfg``, ``device``, ``encoder`` and ``extras``.
    """
    tf = extras["transform"]

    def embed(images: torch.Tensor) -> torch.Tensor:
        f = extract_features(encoder, images, transform=tf, batch_size=cfg.eval.batch_size, device=device)
        return torch.nn.functional.normalize(f, dim=1)

    def classify(images: torch.Tensor) -> torch.Tensor:
        f = extract_features(encoder, images, transform=tf, batch_size=cfg.eval.batch_size, device=device)
        clf = extras.get("probe") or extras["knn"]
        return clf.predict(f).cpu()

    return {"encoder": encoder, "splits": splits, "poisoned": poisoned, "cfg": cfg, "device": device,
            "classify": classify, "embed": embed, "extras": extras}


def prepare_out_dir(out: Path, overwrite: bool) -> Path:
    out = Path(out)
    if out.exists() and not overwrite:
        raise ConfigError(f"output directory '{out}' already exists; pass --overwrite or choose another --out")
    return out.with_name(out.name + ".partial")


class ImageTask:
    """The image-SSL steps of the pipeline (two augmented views, kNN + linear probe). Other modalities provide the
    same methods (see :class:`~clpoison.experiments.clip_task.ImageTextTask`); :func:`run_experiment` does the rest."""

    modality = "image"

    def __init__(self, cfg: ExperimentConfig, device: torch.device, work: Path, echo: Callable[[str], None]) -> None:
        self.cfg, self.device, self.work, self.echo = cfg, device, work, echo

    def load(self) -> ImageSplits:
        splits = load_splits(self.cfg)
        self.echo(f"data: {self.cfg.data.name} ({len(splits.train)} train / {len(splits.test)} test images)")
        return splits

    def build_method(self, train_set: Any):
        return build_method(self.cfg)

    def random_init_metrics(self, method: Any, splits: ImageSplits) -> dict[str, float]:
        m0, _ = evaluate_encoder(method.encoder, splits, self.cfg, self.device, linear=False, prefix="")
        self.echo(f"random-init kNN top-1: {m0['knn_top1']:.4f}")
        return {"knn_top1_random_init": m0["knn_top1"]}

    def batches(self, method: Any, train_set: Any, defense: Any):
        cfg = self.cfg
        sampler = defense.view_sampler(cfg.augment) or make_sampler(cfg.augment)
        augment = TwoViewAugment(cfg.augment, sampler)
        return TwoViewBatches(
            ResidentBatches(train_set, cfg.train.batch_size, self.device, seed=cfg.seed),
            augment,
            channels_last=cfg.train.use_channels_last(self.device, min_conv_channels(method)),
        )

    def evaluate(self, method: Any, splits: ImageSplits) -> tuple[dict[str, Any], dict[str, Any]]:
        return evaluate_encoder(method.encoder, splits, self.cfg, self.device)

    def context(self, method: Any, splits: Any, poisoned: Any, extras: dict) -> dict[str, Any]:
        return attack_context(method.encoder, splits, poisoned, self.cfg, self.device, extras)

    def data_info(self, train_set: Any, splits: Any) -> dict[str, Any]:
        return {"train_images": len(train_set), "test_images": len(splits.test), "classes": splits.class_names,
                "source": splits.source}

    def throughput(self, n_samples: int, seconds: float) -> dict[str, float]:
        return {"pretrain_images_per_s": n_samples / max(seconds, 1e-9)}


def task_for(cfg: ExperimentConfig, device: torch.device, work: Path, echo: Callable[[str], None]):
    """The modality-specific steps for ``cfg.method`` (its class attribute ``modality``, default ``image``)."""
    modality = getattr(METHODS.get(cfg.method.name), "modality", "image")
    if modality == "image":
        return ImageTask(cfg, device, work, echo)
    if modality == "image-text":
        from .clip_task import ImageTextTask

        return ImageTextTask(cfg, device, work, echo)
    raise ConfigError(f"method '{cfg.method.name}' has unknown modality '{modality}'")


def run_experiment(
    cfg: ExperimentConfig,
    out: Path,
    overwrite: bool = False,
    resume: bool = True,
    echo: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    out = Path(out)
    work = prepare_out_dir(out, overwrite)
    device = resolve_device(cfg.device)
    snapshot = cfg.to_dict()
    if work.exists():
        prev = work / "config.json"
        if not resume or not prev.exists() or json.loads(prev.read_text()) != json.loads(dumps_json(snapshot)):
            shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_json(work / "config.json", snapshot)
    try:
        return _run(cfg, out, work, device, snapshot, resume, echo)
    except ClpoisonError:
        # a user error before anything resumable exists leaves no output behind
        if not (work / CHECKPOINT_NAME).exists():
            shutil.rmtree(work, ignore_errors=True)
        raise


def run_or_reuse(cfg: ExperimentConfig, out: Path, echo: Callable[[str], None] = lambda s: None) -> tuple[dict[str, Any], bool]:
    """``(results, reused)``: the finished run at ``out`` when its ``results.json`` was written for exactly this
    config (benchmarks re-use runs across scripts and re-runs), else a fresh :func:`run_experiment` (which resumes
    a matching ``out.partial``). A finished run of a different config is replaced."""
    path = Path(out) / RESULTS_NAME
    if path.exists():
        try:
            old = json.loads(path.read_text())
            if old.get("config") == json.loads(dumps_json(cfg.to_dict())):
                return old, True
        except (OSError, ValueError):
            pass
    return run_experiment(cfg, Path(out), overwrite=True, echo=echo), False


def _run(cfg: ExperimentConfig, out: Path, work: Path, device: torch.device, snapshot: dict, resume: bool,
         echo: Callable[[str], None]) -> dict[str, Any]:
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    task = task_for(cfg, device, work, echo)

    def timed(name: str):
        class _T:
            def __enter__(self_):
                self_.t = time.perf_counter()

            def __exit__(self_, *a):
                timings[name] = round(time.perf_counter() - self_.t, 3)

        return _T()

    seed_everything(cfg.seed, cfg.deterministic)
    with timed("data_s"):
        splits = task.load()

    attack = ATTACKS.get(cfg.attack.name)(ATTACKS.get(cfg.attack.name).Params.from_dict(cfg.attack.params, "attack.params"))
    with timed("attack_s"):
        poisoned = attack.poison(splits, cfg.seed)
    train_splits = poisoned.splits
    if poisoned.manifest is not None:
        atomic_write_json(work / "manifest.json", poisoned.manifest)

    defense = DEFENSES.get(cfg.defense.name)(DEFENSES.get(cfg.defense.name).Params.from_dict(cfg.defense.params, "defense.params"))
    with timed("defense_s"):
        train_set, defense_info = defense.filter(train_splits.train, {"manifest": poisoned.manifest, "seed": cfg.seed})

    seed_everything(cfg.seed, cfg.deterministic)
    method = task.build_method(train_set).to(device)
    metrics: dict[str, Any] = {}
    if cfg.eval.random_init_control:
        with timed("random_init_eval_s"):
            metrics.update(task.random_init_metrics(method, splits))

    batches = task.batches(method, train_set, defense)
    # training-time defenses (e.g. SafeCLIP) may replace the method / batch source and hook into the engine
    method, batches = defense.wrap_training(method, batches, {
        "task": task, "cfg": cfg, "train_set": train_set, "manifest": poisoned.manifest, "out_dir": work,
        "device": device, "seed": cfg.seed})
    trainer = Trainer(method, batches, cfg.train, device, work, snapshot)
    defense.attach(trainer)
    if cfg.eval.every_epochs:
        trainer.on_epoch_end.append(periodic_eval(task, method, attack, splits, train_splits, cfg.eval.every_epochs,
                                                  cfg.train.epochs))
    with timed("pretrain_s"):
        history = trainer.fit(resume=resume)
    timings["pretrain_s_total_including_resumed"] = round(trainer.train_seconds, 3)

    with timed("eval_s"):
        m, extras = task.evaluate(method, splits)
    metrics.update(m)
    context = task.context(method, splits, train_splits, extras)
    with timed("attack_eval_s"):
        metrics.update(attack.evaluate(context))
    timings["total_s"] = round(time.perf_counter() - t_all, 3)
    n_samples = cfg.train.epochs * len(batches) * cfg.train.batch_size
    results = {
        "name": cfg.name,
        "metrics": metrics,
        "config": snapshot,
        "timings": timings,
        "throughput": task.throughput(n_samples, trainer.train_seconds),
        "environment": {**environment(), "device": str(device)},
        "data": task.data_info(train_set, splits),
        "attack": {"name": cfg.attack.name, "manifest": "manifest.json" if poisoned.manifest is not None else None},
        "defense": {"name": cfg.defense.name, **defense_info, **defense.training_summary()},
        "history": history,
    }
    atomic_write_json(work / RESULTS_NAME, results)
    if out.exists():
        shutil.rmtree(out)
    work.rename(out)
    return results


def periodic_eval(task: Any, method: Any, attack: Any, splits: Any, poisoned: Any, every: int, epochs: int):
    """An ``on_epoch_end`` hook: after every ``every``-th epoch (not the last, which the run evaluates anyway) it
    computes the task's clean metrics and the attack's metrics and returns the scalar ones as ``eval_*`` entries of
    the epoch record (so ``results.json["history"]`` holds e.g. ASR against epochs). The RNG state and the
    model's train mode are restored, so training (and resuming) is unaffected."""

    def hook(trainer: Any, epoch: int) -> dict[str, Any]:
        if epoch % every or epoch >= epochs:
            return {}
        state = torch.random.get_rng_state()
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        modes = [(mod, mod.training) for mod in method.modules()]
        t0 = time.perf_counter()
        try:
            m, extras = task.evaluate(method, splits)
            m.update(attack.evaluate(task.context(method, splits, poisoned, extras)))
        finally:
            torch.random.set_rng_state(state)
            if cuda is not None:
                torch.cuda.set_rng_state_all(cuda)
            for mod, was in modes:
                mod.train(was)
        out = {f"eval_{k}": v for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        out["eval_seconds"] = round(time.perf_counter() - t0, 3)
        return out

    return hook


def format_table(results: dict[str, Any]) -> str:
    rows = [("metric", "value")] + [
        (k, f"{v:.4f}" if isinstance(v, float) else str(v)) for k, v in sorted(results["metrics"].items())
    ]
    rows.append(("pretrain time (s)", f"{results['timings'].get('pretrain_s', float('nan')):.1f}"))
    rows.append(("total time (s)", f"{results['timings'].get('total_s', float('nan')):.1f}"))
    w = max(len(r[0]) for r in rows)
    lines = [f"{a:<{w}}  {b}" for a, b in rows]
    lines.insert(1, "-" * (w + 10))
    return "\n".join(lines)
