"""The pipeline runner: dataset → attack → defense → pretrain → evaluate → results.

The modality-specific steps (load the data, build the method and its batch source, evaluate, the random-init
control, the attack-evaluation context) come from a *task* chosen by the method's ``modality`` from the task
registry (:mod:`clpoison.experiments.tasks`): ``image`` for image SSL (SimCLR, MoCo v2, BYOL), ``image-text`` for
CLIP. Everything else (output folder, config snapshot, attack/defense slots, checkpoint/resume, timings,
results.json) is shared: the run's named stages, data → poison → filter → build → train → evaluate → publish, are
:class:`~clpoison.experiments.stages.RunStages`. The attack and the defense must fit the method's data (their
``modality``): :func:`~clpoison.experiments.config.check_modalities` says so in one line before anything is read.

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
Every such decision is :class:`~clpoison.experiments.stages.Ranks`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

import torch

from ..engine.trainer import CHECKPOINT_NAME
from ..errors import ClpoisonError, ConfigError
from ..report.tables import format_table
from ..run_folder import RESULTS
from ..utils.device import resolve_device
from ..utils.dist import init_distributed, is_main
from ..utils.lock import OutputLock
from ..utils.io import atomic_write_json, check_output_path, check_replaceable, remove_stale_temps
from .config import ExperimentConfig, check_modalities
from .fingerprint import config_changes
from .stages import Ranks, RunStages, environment, periodic_eval, read_json

__all__ = ["run_experiment", "run_or_reuse", "periodic_eval", "environment", "format_table", "RESULTS_NAME"]

RESULTS_NAME = RESULTS


def prepare_out_dir(out: Path, overwrite: bool, inputs: Any = ()) -> Path:
    out = check_output_path(out, "dir", inputs=inputs)
    check_output_path(out.with_name(out.name + ".partial"), "dir")
    if out.exists() and not overwrite:
        raise ConfigError(f"output directory '{out}' already exists; pass --overwrite or choose another --out")
    check_replaceable(out, RUN_MARKERS, "run folder")
    return out.with_name(out.name + ".partial")


RUN_MARKERS = (RESULTS, "config.json", CHECKPOINT_NAME)  # what makes a folder a run --overwrite may replace


def run_experiment(
    cfg: ExperimentConfig,
    out: Path,
    overwrite: bool = False,
    resume: bool = True,
    echo: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    out = Path(out)
    check_modalities(cfg)  # attack and defense fit the method's data: checked before anything is read or written
    check_output_path(out, "dir", inputs=cfg.to_dict())  # never the data, a manifest or a checkpoint it reads
    device = init_distributed(resolve_device(cfg.device))  # joins torchrun's / SLURM's process group, if any
    if not is_main():  # rank 0 holds the lock and prepares the folder
        return _run_locked(cfg, out, overwrite, resume, lambda s: None, device)
    with OutputLock(out):  # one writer per output folder; a second command fails at once naming this pid
        return _run_locked(cfg, out, overwrite, resume, echo, device)


def _run_locked(cfg: ExperimentConfig, out: Path, overwrite: bool, resume: bool,
                echo: Callable[[str], None], device: torch.device) -> dict[str, Any]:
    snapshot, ranks = cfg.to_dict(), Ranks()
    work = out.with_name(out.name + ".partial")
    ranks.write(lambda: _prepare(out, work, snapshot, overwrite, resume))  # rank 0 prepares the folder
    if not ranks.main:
        return _run(cfg, out, work, device, snapshot, resume, echo, overwrite)
    try:
        return _run(cfg, out, work, device, snapshot, resume, echo, overwrite)
    except ClpoisonError as e:
        # a user error before anything resumable exists (or one that makes the checkpoint useless, such as a
        # model that diverged by the end of training) leaves no output behind; a non-finite loss mid-training
        # keeps the last good checkpoint
        if getattr(e, "discard_partial", False) or not (work / CHECKPOINT_NAME).exists():
            shutil.rmtree(work, ignore_errors=True)
        raise


def _prepare(out: Path, work: Path, snapshot: dict, overwrite: bool, resume: bool) -> None:
    """The working folder ``work`` of ``out``, holding ``config.json``: a partial run of another config is removed
    (or, when it could be resumed, refused unless ``overwrite``)."""
    prepare_out_dir(out, overwrite, snapshot)
    remove_stale_temps(work)  # a writer killed mid-file left them; we hold the lock, so it is dead
    if work.exists():
        changed = config_changes(read_json(work / "config.json"), snapshot) if resume else ["--no-resume"]
        if changed and resume and (work / CHECKPOINT_NAME).exists() and not overwrite:
            raise ConfigError(f"the config changed since the interrupted run in '{work}' ({', '.join(changed[:4])}); "
                              "use --overwrite to start again (or restore the config to resume)")
        if changed:
            shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_json(work / "config.json", snapshot)


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


def _run(cfg: ExperimentConfig, out: Path, work: Path, device: torch.device, snapshot: dict, resume: bool,
         echo: Callable[[str], None], overwrite: bool = False) -> dict[str, Any]:
    """The run's stages, data → poison → filter → build → train → evaluate → publish (:mod:`.stages`)."""
    return RunStages(cfg, out, work, device, snapshot, resume, echo, overwrite).run()
