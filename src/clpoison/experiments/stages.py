"""One run as named stages: data → poison → filter → build → train → evaluate → publish
(:class:`RunStages`, called by :func:`clpoison.experiments.runner.run_experiment` once the output folder is ready).

Each stage reads what the earlier ones left on the object and hands the components their typed context
(:mod:`clpoison.contexts`); the modality-specific work is the task's (:mod:`clpoison.experiments.tasks`).

Several processes (torchrun, SLURM): every rank runs the same stages; what differs by rank is decided in one
place, :class:`Ranks` — rank 0 poisons by itself and sends the result, writes the manifest and the folder's files
while the others wait, builds the method first (the others re-use the tokenizer it writes), runs the random-init
control, evaluates and publishes; the other ranks then return its ``results.json``.
"""

from __future__ import annotations

import json
import platform
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from ..attacks import ATTACKS
from ..contexts import FilterContext, PoisonContext, TrainingContext
from ..defenses import DEFENSES
from ..engine.trainer import CHECKPOINT_NAME, Trainer, progress_bar_on
from ..errors import DataError, TrainingDiverged
from ..models.clip_file import save_clip_model
from ..models.encoder_file import save_encoder
from ..report.run_report import run_markdown
from ..run_folder import RESULTS
from ..utils.dist import all_gather_object, alone, barrier, broadcast_object, is_main, rank, rank_seed, world_size
from ..utils.faults import fault_point
from ..utils.io import atomic_write_bytes, atomic_write_json, atomic_write_text, dumps_json
from ..utils.seed import rng_preserved, seed_everything
from .config import ExperimentConfig
from .fingerprint import run_fingerprint
from .sources import verify_if_export
from .tasks import task_for

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


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


class Ranks:
    """Every decision that depends on the rank, for one run (one process: rank 0 of a world of one)."""

    def __init__(self) -> None:
        self.main, self.world = is_main(), world_size()

    def once(self, fn: Callable[[], Any], shared: bool = True) -> Any:
        """``fn()`` by itself (``alone``: a surrogate it trains trains here only) — with several processes and
        ``shared``, on rank 0 only, its result sent to the others."""
        once = self.world > 1 and shared
        with alone():
            result = fn() if self.main or not once else None
        return broadcast_object(result) if once else result

    def same_data(self, fp: dict) -> None:
        """Every rank trains on rank 0's data: the fingerprints of the clean data and of the manifest agree."""
        if self.world == 1:
            return
        for r, other in enumerate(all_gather_object(fp)):
            if other != fp:
                raise DataError(f"process {r} sees other data than process {rank()} (data or manifest fingerprint "
                                "differs); every process must read the same data.path and the same poisoned data")

    def write(self, fn: Callable[[], None]) -> None:
        """Rank 0 writes (``fn``); every rank goes on once it has."""
        if self.main:
            fn()
        barrier()

    def first(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` on rank 0 first, then on the others (they re-use what it wrote: the CLIP tokenizer)."""
        if not self.main:
            barrier()
        result = fn()
        if self.main:
            barrier()
        return result

    def seed_augmentation(self, seed: int, deterministic: bool) -> None:
        """Each rank's augmentation draws its own stream (a resumed run restores each rank's state)."""
        if self.world > 1:
            seed_everything(rank_seed(seed, rank()), deterministic)

    def notify(self, msg: str) -> None:
        if self.main:
            print(msg, file=sys.stderr, flush=True)

    def finish(self, fn: Callable[[], dict], out: Path) -> dict[str, Any]:
        """Rank 0 evaluates and publishes (``fn``) while the others wait; they return its results."""
        if not self.main:
            barrier()
            return read_json(out / RESULTS) or {"metrics": {}, "rank": rank()}
        results = fn()
        barrier()
        return results


class RunStages:
    """One run of ``cfg`` in the prepared working folder ``work`` (published as ``out``): :meth:`run`."""

    def __init__(self, cfg: ExperimentConfig, out: Path, work: Path, device: torch.device, snapshot: dict,
                 resume: bool, echo: Callable[[str], None], overwrite: bool = False) -> None:
        self.cfg, self.out, self.work, self.device, self.snapshot = cfg, out, work, device, snapshot
        self.resume, self.echo, self.overwrite = resume, echo, overwrite
        self.timings: dict[str, float] = {}
        self.metrics: dict[str, Any] = {}
        self.t_all = time.perf_counter()
        self.task = task_for(cfg, device, work, echo)
        self.ranks = Ranks()

    def run(self) -> dict[str, Any]:
        self.data()
        self.poison()
        self.filter()
        self.build()
        self.train()
        return self.ranks.finish(self.evaluate_and_publish, self.out)

    def evaluate_and_publish(self) -> dict[str, Any]:
        self.evaluate()
        return self.publish()

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(time.perf_counter() - t, 3)

    # -- the stages ------------------------------------------------------------------------------------------------
    def data(self) -> None:
        """The clean splits (an export's files checked against its manifest)."""
        seed_everything(self.cfg.seed, self.cfg.deterministic)
        with self.timed("data_s"):
            self.splits = self.task.load()
            self.check_export()

    def poison(self) -> None:
        """The attack's poisoned splits (made once, on rank 0); its manifest and files written; the data fingerprint
        checked across ranks and against an interrupted run's."""
        cfg = self.cfg
        self.attack = ATTACKS.build(cfg.attack.name, cfg.attack.params)
        ctx = PoisonContext(device=self.device, work_dir=self.work / "attack", run_dir=self.work, echo=self.echo,
                            progress=progress_bar_on(cfg.train.progress))
        with self.timed("attack_s"):
            self.poisoned = self.ranks.once(lambda: self.attack.poison(self.splits, cfg.seed, ctx),
                                            shared=cfg.attack.name != "none")
        self.fp = run_fingerprint(self.splits, self.poisoned.manifest, self.poisoned.splits.train)  # streamed
        self.ranks.same_data(self.fp)  # poison shards are hashed on every rank
        self.ranks.write(self.write_poison)

    def filter(self) -> None:
        """The data-level defense: the split to train on."""
        cfg = self.cfg
        self.defense = DEFENSES.build(cfg.defense.name, cfg.defense.params)
        ctx = FilterContext(manifest=self.poisoned.manifest, seed=cfg.seed, device=self.device)
        with self.timed("defense_s"):
            self.train_set, self.defense_info = self.defense.filter(self.poisoned.splits.train, ctx)

    def build(self) -> None:
        """The method (the random-init control on it) and its batch source, as the training-time defense wraps them."""
        cfg, task = self.cfg, self.task
        seed_everything(cfg.seed, cfg.deterministic)
        method = self.ranks.first(lambda: task.build_method(self.train_set).to(self.device))
        if cfg.eval.random_init_control and self.ranks.main:  # the control draws nothing from training's RNGs
            with self.timed("random_init_eval_s"), alone(), rng_preserved():
                self.metrics.update(task.random_init_metrics(method, self.splits))
        ctx = TrainingContext(train_set=self.train_set, manifest=self.poisoned.manifest, seed=cfg.seed,
                              device=self.device, out_dir=self.work, model=dict(vars(cfg.model)),
                              load_method=task.method_from_checkpoint)
        self.method, self.batches = self.defense.wrap_training(method, task.batches(method, self.train_set,
                                                                                    self.defense), ctx)

    def train(self) -> None:
        """The engine, with the defense's schedule and hooks (and the periodic evaluation); resumes a partial run."""
        cfg, hooks = self.cfg, self.defense.training_hooks()
        self.trainer = Trainer(self.method, self.batches, cfg.train, self.device, self.work, self.snapshot,
                               schedule=hooks.schedule, on_epoch_start=hooks.epoch_start, on_epoch_end=hooks.epoch_end,
                               state=hooks.state, fingerprint=self.fp, notify=self.ranks.notify)
        if cfg.eval.every_epochs:
            self.trainer.on_epoch_end.append(periodic_eval(self.task, self.method, self.attack, self.splits,
                                                           self.poisoned.splits, cfg.eval.every_epochs, cfg.train.epochs))
        self.ranks.seed_augmentation(cfg.seed, cfg.deterministic)
        with self.timed("pretrain_s"):
            self.history = self.trainer.fit(resume=self.resume)
        self.timings["pretrain_s_total_including_resumed"] = round(self.trainer.train_seconds, 3)

    def evaluate(self) -> None:
        """The task's clean metrics, then the attack's (rank 0, by itself)."""
        with self.timed("eval_s"), alone():
            fault_point("evaluate")
            try:
                m, extras = self.task.evaluate(self.method, self.splits)
            except TrainingDiverged as e:  # the trained weights are not usable: nothing to resume
                e.discard_partial = True
                raise
        self.metrics.update(m)
        context = self.task.context(self.method, self.splits, self.poisoned.splits, extras)
        with self.timed("attack_eval_s"), alone():
            attack_m = self.attack.evaluate(context)
        self.metrics.update(attack_m)
        self.task.attack_metrics(self.cfg.attack.name, attack_m)

    def publish(self) -> dict[str, Any]:
        """``results.json``, the encoder (and CLIP) files and ``report.md``; the working folder renamed to ``out``."""
        cfg, work = self.cfg, self.work
        results = self.results()
        a = cfg.augment
        save_encoder(work, self.method.encoder, vars(cfg.model), {"size": a.out_size, "mean": a.mean, "std": a.std},
                     cfg.method.name, self.snapshot)
        if self.task.modality == "image-text":  # both towers + tokenizer: what `clpoison scan` needs
            save_clip_model(work, self.method.state_dict(), self.snapshot)
        atomic_write_text(work / "report.md", run_markdown(json.loads(dumps_json(results))))
        atomic_write_json(work / RESULTS, results)
        if self.out.exists():
            shutil.rmtree(self.out)
        fault_point("publish-run")
        work.rename(self.out)
        return results

    # -- pieces of the stages --------------------------------------------------------------------------------------
    def check_export(self) -> None:
        d = self.cfg.data
        checked = verify_if_export(d.path, self.splits, not (d.train_limit or d.test_limit or d.image_size))
        if checked is not None:
            limited = [k for k in ("train_limit", "test_limit", "image_size") if getattr(d, k)]
            self.echo(f"data: verified the export {checked['folder']} against its manifest ({checked['files']} files; "
                      + (f"splits {', '.join(checked['splits_checked'])} by fingerprint)" if checked["splits_checked"]
                         else f"the data fingerprint check was skipped: data.{', data.'.join(limited) or 'path'} "
                         "changes what is read — the file hashes cover it)"))

    def write_poison(self) -> None:
        """The manifest and the attack's files; resume only onto the same data (the fingerprint is recorded)."""
        work, poisoned = self.work, self.poisoned
        if poisoned.manifest is not None:
            atomic_write_json(work / "manifest.json", poisoned.manifest)
        for name, data in poisoned.artifacts.items():
            atomic_write_bytes(work / name, data)
        ckpt = work / CHECKPOINT_NAME
        if self.resume and ckpt.exists() and read_json(work / FINGERPRINT_NAME) != json.loads(dumps_json(self.fp)):
            if not self.overwrite:
                raise DataError(f"the data changed since the interrupted run in '{work}'; use --overwrite to start "
                                "again (or restore the data to resume)")
            for name in (CHECKPOINT_NAME, "metrics.jsonl"):
                (work / name).unlink(missing_ok=True)
        atomic_write_json(work / FINGERPRINT_NAME, self.fp)

    def results(self) -> dict[str, Any]:
        cfg, task = self.cfg, self.task
        self.timings["total_s"] = round(time.perf_counter() - self.t_all, 3)
        n_samples = cfg.train.epochs * len(self.batches) * cfg.train.batch_size
        return {
            "name": cfg.name,
            "metrics": self.metrics,
            "config": self.snapshot,
            "timings": self.timings,
            "throughput": task.throughput(n_samples, self.trainer.train_seconds),
            "environment": {**environment(), "device": str(self.device), "world_size": self.ranks.world},
            "data": task.data_info(self.train_set, self.splits),
            "attack": {"name": cfg.attack.name,
                       "manifest": "manifest.json" if self.poisoned.manifest is not None else None},
            "defense": {"name": cfg.defense.name, **self.defense_info, **self.defense.training_summary()},
            "history": self.history,
            **task.extra_results(),
        }


def periodic_eval(task: Any, method: Any, attack: Any, splits: Any, poisoned: Any, every: int, epochs: int):
    """An ``on_epoch_end`` hook: after every ``every``-th epoch (not the last, which the run evaluates anyway) it
    computes the task's clean metrics and the attack's metrics and returns the scalar ones as ``eval_*`` entries of
    the epoch record (so ``results.json["history"]`` holds e.g. ASR against epochs). The RNG state and the
    model's train mode are restored, so training (and resuming) is unaffected."""

    def hook(view: Any, epoch: int) -> dict[str, Any]:
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
