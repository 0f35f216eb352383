"""The pipeline runner: dataset → attack → defense → pretrain → evaluate → results.

The modality-specific steps (load the data, build the method and its batch source, evaluate, the random-init
control, the attack-evaluation context) come from a *task* chosen by the method's ``modality`` from the task
registry (:mod:`clpoison.experiments.tasks`): ``image`` for image SSL (SimCLR, MoCo v2, BYOL), ``image-text`` for
CLIP. Everything else (output folder, config snapshot, attack/defense slots, checkpoint/resume, timings,
results.json) is shared.

:func:`run_experiment` executes one validated :class:`ExperimentConfig` and writes into ``out``:

* ``results.json`` — ``{"metrics", "config", "timings", "environment", ...}``;
* ``checkpoint.pt`` — the training checkpoint (model, optimiser, RNG, ... — see the engine);
* ``encoder.safetensors`` + ``encoder.json`` — the trained image encoder, weights only, with its architecture and
  preprocessing (:mod:`clpoison.models.encoder_file`; read by :func:`clpoison.load_encoder`, ``clpoison evaluate``);
* ``metrics.jsonl`` — the training log; ``manifest.json`` when an attack ran;
* ``report.md`` — a short human-readable summary (:func:`clpoison.report.run_report.run_markdown`).

Work happens in ``OUT.partial/`` which is renamed to ``OUT`` at the very end, so an interrupted run never leaves
something that looks finished; re-running the same command resumes from the partial checkpoint. One process
writes an output at a time: the run holds ``.OUT.lock`` (:class:`~clpoison.utils.lock.OutputLock`), so a second
command on the same ``--out`` fails at once with one line naming the first one's pid. A partial run is resumed
only onto the same config (presentation keys aside) and the same data (``fingerprint.json``, see
:mod:`clpoison.experiments.fingerprint`); otherwise the command stops with one line (``--overwrite`` starts again).

Several processes (``torchrun --nproc_per_node N -m clpoison run ...`` or ``srun``; :mod:`clpoison.utils.dist`):
every rank loads the data and builds the same model; rank 0 alone holds the lock, prepares the folder, runs the
attack (once) and sends the poisoned data to the others, and every rank checks that the fingerprint of its data
and of the manifest equals rank 0's. ``train.batch_size`` is the *global* batch (each rank draws
``batch_size / N`` of it from its own shard of the epoch's order), so a config means the same training on any
number of processes. Each rank's augmentation has its own seed (:func:`~clpoison.utils.dist.rank_seed`). Rank 0
writes the checkpoint, log, manifest and results and evaluates; the others wait for it and return its results.
"""

from __future__ import annotations

import json
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from ..attacks import ATTACKS
from ..defenses import DEFENSES
from ..engine.trainer import CHECKPOINT_NAME, Trainer, progress_bar_on
from ..errors import ClpoisonError, ConfigError, DataError, TrainingDiverged
from ..models.clip_file import save_clip_model
from ..models.encoder_file import save_encoder
from ..report.run_report import run_markdown
from ..report.tables import format_table
from ..utils.device import resolve_device
from ..utils.dist import (all_gather_object, alone, barrier, broadcast_object, init_distributed, is_main, rank, rank_seed,
                          world_size)
from ..utils.faults import fault_point
from ..utils.lock import OutputLock
from ..utils.io import (atomic_write_bytes, atomic_write_json, atomic_write_text, check_output_path, check_replaceable,
                        dumps_json, remove_stale_temps)
from ..utils.seed import rng_preserved, seed_everything
from .config import ExperimentConfig
from .fingerprint import config_changes, run_fingerprint
from .sources import verify_if_export
from .tasks import task_for

__all__ = ["run_experiment", "run_or_reuse", "periodic_eval", "environment", "format_table", "RESULTS_NAME"]

RESULTS_NAME = "results.json"
FINGERPRINT_NAME = "fingerprint.json"


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


def prepare_out_dir(out: Path, overwrite: bool, inputs: Any = ()) -> Path:
    out = check_output_path(out, "dir", inputs=inputs)
    check_output_path(out.with_name(out.name + ".partial"), "dir")
    if out.exists() and not overwrite:
        raise ConfigError(f"output directory '{out}' already exists; pass --overwrite or choose another --out")
    check_replaceable(out, RUN_MARKERS, "run folder")
    return out.with_name(out.name + ".partial")


RUN_MARKERS = ("results.json", "config.json", "checkpoint.pt")  # what makes a folder a run --overwrite may replace


def run_experiment(
    cfg: ExperimentConfig,
    out: Path,
    overwrite: bool = False,
    resume: bool = True,
    echo: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    out = Path(out)
    check_output_path(out, "dir", inputs=cfg.to_dict())  # never the data, a manifest or a checkpoint it reads
    device = init_distributed(resolve_device(cfg.device))  # joins torchrun's / SLURM's process group, if any
    if not is_main():  # rank 0 holds the lock and prepares the folder
        return _run_locked(cfg, out, overwrite, resume, lambda s: None, device)
    with OutputLock(out):  # one writer per output folder; a second command fails at once naming this pid
        return _run_locked(cfg, out, overwrite, resume, echo, device)


def _run_locked(cfg: ExperimentConfig, out: Path, overwrite: bool, resume: bool,
                echo: Callable[[str], None], device: torch.device) -> dict[str, Any]:
    snapshot = cfg.to_dict()
    if not is_main():
        barrier()  # rank 0 has prepared the folder
        return _run(cfg, out, out.with_name(out.name + ".partial"), device, snapshot, resume, echo, overwrite)
    work = prepare_out_dir(out, overwrite, cfg.to_dict())
    remove_stale_temps(work)  # a writer killed mid-file left them; we hold the lock, so it is dead
    if work.exists():
        changed = config_changes(_read_json(work / "config.json"), snapshot) if resume else ["--no-resume"]
        if changed and resume and (work / CHECKPOINT_NAME).exists() and not overwrite:
            raise ConfigError(f"the config changed since the interrupted run in '{work}' ({', '.join(changed[:4])}); "
                              "use --overwrite to start again (or restore the config to resume)")
        if changed:
            shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_json(work / "config.json", snapshot)
    barrier()
    try:
        return _run(cfg, out, work, device, snapshot, resume, echo, overwrite)
    except ClpoisonError as e:
        # a user error before anything resumable exists (or one that makes the checkpoint useless, such as a
        # model that diverged by the end of training) leaves no output behind; a non-finite loss mid-training
        # keeps the last good checkpoint
        if getattr(e, "discard_partial", False) or not (work / CHECKPOINT_NAME).exists():
            shutil.rmtree(work, ignore_errors=True)
        raise


def run_or_reuse(cfg: ExperimentConfig, out: Path, echo: Callable[[str], None] = lambda s: None,
                 reuse_only: bool = False) -> tuple[dict[str, Any], bool]:
    """``(results, reused)``: the finished run at ``out`` when its ``results.json`` was written for this config
    (:func:`~clpoison.experiments.fingerprint.config_changes` finds no change; benchmarks re-use runs across scripts
    and re-runs), else a fresh :func:`run_experiment` (which resumes
    a matching ``out.partial``). A finished run of a different config is replaced. ``reuse_only``: never train;
    one ConfigError line when there is no finished run of this config."""
    path = Path(out) / RESULTS_NAME
    if path.exists():
        try:
            old = json.loads(path.read_text())
            if isinstance(old.get("config"), dict) and not config_changes(old["config"], cfg.to_dict()):
                return old, True
        except (OSError, ValueError):
            pass
    if reuse_only:
        raise ConfigError(f"'{out}' holds no finished run of this config (reuse only: nothing is trained); give the "
                          "work folder and options of the run that trained it")
    return run_experiment(cfg, Path(out), overwrite=True, echo=echo), False


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _check_resume_data(work: Path, fp: dict, resume: bool, overwrite: bool) -> None:
    """Resume only onto the same data: an interrupted run whose recorded fingerprint differs stops with one line
    (``--overwrite`` discards its checkpoint and starts again); the fingerprint is then recorded."""
    ckpt = work / CHECKPOINT_NAME
    if resume and ckpt.exists() and _read_json(work / FINGERPRINT_NAME) != json.loads(dumps_json(fp)):
        if not overwrite:
            raise DataError(f"the data changed since the interrupted run in '{work}'; use --overwrite to start again "
                            "(or restore the data to resume)")
        for name in (CHECKPOINT_NAME, "metrics.jsonl"):
            (work / name).unlink(missing_ok=True)
    atomic_write_json(work / FINGERPRINT_NAME, fp)


def _run(cfg: ExperimentConfig, out: Path, work: Path, device: torch.device, snapshot: dict, resume: bool,
         echo: Callable[[str], None], overwrite: bool = False) -> dict[str, Any]:
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
        d = cfg.data
        checked = verify_if_export(d.path, splits, not (d.train_limit or d.test_limit or d.image_size))
        if checked is not None:
            limited = [k for k in ("train_limit", "test_limit", "image_size") if getattr(d, k)]
            echo(f"data: verified the export {checked['folder']} against its manifest ({checked['files']} files; "
                 + (f"splits {', '.join(checked['splits_checked'])} by fingerprint)" if checked["splits_checked"] else
                    f"the data fingerprint check was skipped: data.{', data.'.join(limited) or 'path'} changes what is "
                    "read — the file hashes cover it)"))

    attack = ATTACKS.build(cfg.attack.name, cfg.attack.params)
    main, world = is_main(), world_size()
    with timed("attack_s"):
        once = world > 1 and cfg.attack.name != "none"  # several processes: poison once, on rank 0, and send it
        with alone():  # an attack that trains a surrogate trains it on this process only
            poisoned = attack.poison(splits, cfg.seed, {"device": device, "work_dir": work / "attack", "run_dir": work, "echo": echo,
                                                         "progress": progress_bar_on(cfg.train.progress)}) if main or not once else None
        if once:
            poisoned = broadcast_object(poisoned)
    train_splits = poisoned.splits
    fp = run_fingerprint(splits, poisoned.manifest, train_splits.train)  # every rank hashes streamed poison shards
    if world > 1:
        _check_same_data(fp)
    if main:
        if poisoned.manifest is not None:
            atomic_write_json(work / "manifest.json", poisoned.manifest)
        for name, data in poisoned.artifacts.items():
            atomic_write_bytes(work / name, data)
        _check_resume_data(work, fp, resume, overwrite)
    barrier()

    defense = DEFENSES.build(cfg.defense.name, cfg.defense.params)
    with timed("defense_s"):
        train_set, defense_info = defense.filter(train_splits.train, {"manifest": poisoned.manifest, "seed": cfg.seed,
                                                                    "device": device})

    seed_everything(cfg.seed, cfg.deterministic)
    if not main:
        barrier()  # rank 0 first: it writes what the others re-use (the CLIP tokenizer)
    method = task.build_method(train_set).to(device)
    if main:
        barrier()
    metrics: dict[str, Any] = {}
    if cfg.eval.random_init_control and main:  # the control draws nothing from the RNGs training will use
        with timed("random_init_eval_s"), alone(), rng_preserved():
            metrics.update(task.random_init_metrics(method, splits))

    batches = task.batches(method, train_set, defense)
    # training-time defenses (e.g. SafeCLIP) may replace the method / batch source and hook into the engine
    method, batches = defense.wrap_training(method, batches, {
        "task": task, "cfg": cfg, "train_set": train_set, "manifest": poisoned.manifest, "out_dir": work,
        "device": device, "seed": cfg.seed})
    hooks = defense.training_hooks()
    trainer = Trainer(method, batches, cfg.train, device, work, snapshot, schedule=hooks.schedule,
                      on_epoch_start=hooks.epoch_start, on_epoch_end=hooks.epoch_end, state=hooks.state, fingerprint=fp,
                      notify=lambda msg: print(msg, file=sys.stderr, flush=True) if main else None)
    if cfg.eval.every_epochs:
        trainer.on_epoch_end.append(periodic_eval(task, method, attack, splits, train_splits, cfg.eval.every_epochs,
                                                  cfg.train.epochs))
    if world > 1:  # each rank's augmentation draws its own stream (a resumed run restores each rank's state)
        seed_everything(rank_seed(cfg.seed, rank()), cfg.deterministic)
    with timed("pretrain_s"):
        history = trainer.fit(resume=resume)
    timings["pretrain_s_total_including_resumed"] = round(trainer.train_seconds, 3)
    if not main:
        barrier()  # rank 0 evaluates and publishes the run
        return _read_json(out / RESULTS_NAME) or {"metrics": {}, "rank": rank()}

    with timed("eval_s"), alone():
        fault_point("evaluate")
        try:
            m, extras = task.evaluate(method, splits)
        except TrainingDiverged as e:  # the trained weights are not usable: nothing to resume
            e.discard_partial = True
            raise
    metrics.update(m)
    context = task.context(method, splits, train_splits, extras)
    with timed("attack_eval_s"), alone():
        attack_m = attack.evaluate(context)
    metrics.update(attack_m)
    task.attack_metrics(cfg.attack.name, attack_m)
    timings["total_s"] = round(time.perf_counter() - t_all, 3)
    n_samples = cfg.train.epochs * len(batches) * cfg.train.batch_size
    results = {
        "name": cfg.name,
        "metrics": metrics,
        "config": snapshot,
        "timings": timings,
        "throughput": task.throughput(n_samples, trainer.train_seconds),
        "environment": {**environment(), "device": str(device), "world_size": world},
        "data": task.data_info(train_set, splits),
        "attack": {"name": cfg.attack.name, "manifest": "manifest.json" if poisoned.manifest is not None else None},
        "defense": {"name": cfg.defense.name, **defense_info, **defense.training_summary()},
        "history": history,
        **task.extra_results(),
    }
    a = cfg.augment
    save_encoder(work, method.encoder, vars(cfg.model), {"size": a.out_size, "mean": a.mean, "std": a.std},
                 cfg.method.name, snapshot)
    if task.modality == "image-text":  # both towers + tokenizer: what `clpoison scan` needs
        save_clip_model(work, method.state_dict(), snapshot)
    atomic_write_text(work / "report.md", run_markdown(json.loads(dumps_json(results))))
    atomic_write_json(work / RESULTS_NAME, results)
    if out.exists():
        shutil.rmtree(out)
    fault_point("publish-run")
    work.rename(out)
    barrier()
    return results


def _check_same_data(fp: dict) -> None:
    """Every rank trains on rank 0's data: the fingerprints of the clean data and of the manifest must agree."""
    for r, other in enumerate(all_gather_object(fp)):
        if other != fp:
            raise DataError(f"process {r} sees other data than process {rank()} (data or manifest fingerprint differs); "
                            "every process must read the same data.path and the same poisoned data")


def periodic_eval(task: Any, method: Any, attack: Any, splits: Any, poisoned: Any, every: int, epochs: int):
    """An ``on_epoch_end`` hook: after every ``every``-th epoch (not the last, which the run evaluates anyway) it
    computes the task's clean metrics and the attack's metrics and returns the scalar ones as ``eval_*`` entries of
    the epoch record (so ``results.json["history"]`` holds e.g. ASR against epochs). The RNG state and the
    model's train mode are restored, so training (and resuming) is unaffected."""

    def hook(trainer: Any, epoch: int) -> dict[str, Any]:
        if epoch % every or epoch >= epochs:
            return {}
        modes = [(mod, mod.training) for mod in method.modules()]
        t0 = time.perf_counter()
        try:
            with alone(), rng_preserved():  # rank 0 evaluates by itself
                m, extras = task.evaluate(method, splits)
                m.update(attack.evaluate(task.context(method, splits, poisoned, extras)))
        finally:
            for mod, was in modes:
                mod.train(was)
        out = {f"eval_{k}": v for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        out["eval_seconds"] = round(time.perf_counter() - t0, 3)
        return out

    hook.main_only = True  # type: ignore[attr-defined]  # several processes: rank 0 evaluates, the others go on
    return hook
