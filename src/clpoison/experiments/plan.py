"""``clpoison run CONFIG --dry-run``: what a run would do, without training it.

:func:`plan_experiment` resolves the config, finds the data (loads the splits: a streamed split only counts its
samples), builds the method and its batch source exactly as the run would, and reports

* the data found (and, for CleanCLIP, its fine-tuning split: the steps are counted on it), the processes (``WORLD_SIZE`` of torchrun / SLURM, 1 otherwise: ``RANK=0 WORLD_SIZE=8 clpoison run
  ... --dry-run`` plans for 8 processes from one), the global and per-process batch, steps per epoch and in total;
* a memory estimate: parameters, gradients and optimiser moments (fp32), the data the splits hold in memory
  (uint8, ``resident_bytes``: 0 for a streamed split) — and, on
  CUDA, the peak memory of the measured steps (activations included);
* a time estimate from a few measured optimiser steps on this process (after one warm-up step): seconds per step
  × steps per epoch × epochs. On several processes each one runs that many steps on its share of the batch;
* the gradient all-reduce: the fp32 gradient bytes DDP sums every step. Under ``torchrun`` / ``srun`` with several
  processes the dry run joins the process group, each process measures its step alone, then all of them time a few
  all-reduces of a buffer the size of the gradients (after one warm-up; the slowest process counts) — reported per
  step and as a share of the step (an upper bound: DDP overlaps it with the backward), and added to the time
  estimate. With one process (also ``RANK=0 WORLD_SIZE=8`` without a launcher) it is not measured: the bytes are
  reported with a note.

Nothing is written: no output folder, no checkpoint, no log.
"""

from __future__ import annotations

import copy
import os
import time
from typing import Any

import torch
import torch.distributed as tdist

from ..engine.trainer import Trainer
from ..utils.device import resolve_device
from ..utils import dist
from ..utils.dist import env_from_environ
from ..utils.seed import seed_everything
from .config import ExperimentConfig
from .tasks import task_for

OPTIMIZER_MOMENTS = {"sgd": 1, "lars": 1, "adamw": 2}


def _mb(n_bytes: float) -> float:
    return round(n_bytes / 2**20, 1)


def launched(env: Any) -> bool:
    """Whether the other processes of ``env`` exist: started by torchrun (its agent sets ``TORCHELASTIC_RUN_ID``) or
    srun — not ``RANK=0 WORLD_SIZE=8`` set by hand to plan for 8 from one process."""
    return env is not None and (env.launcher == "slurm" or "TORCHELASTIC_RUN_ID" in os.environ)


def plan_experiment(cfg: ExperimentConfig, measure_steps: int = 2, echo=lambda s: None,
                    allreduce_repeats: int = 5) -> dict[str, Any]:
    """The plan (see the module docstring); under torchrun with several processes every process must call it, and
    rank 0's plan is the one to print (the others get the same dict)."""
    device = resolve_device(cfg.device)
    env = env_from_environ()
    world = 1 if env is None else env.world_size
    if cfg.train.batch_size % world:
        from ..errors import ConfigError

        raise ConfigError(f"train.batch_size={cfg.train.batch_size} is not divisible by the {world} processes; "
                          f"use a multiple of {world}")
    joined = measure_steps > 0 and launched(env)
    if joined:
        device = dist.init_distributed(device)
        if not dist.is_main():
            echo = lambda s: None  # noqa: E731  (rank 0 speaks)
    with dist.alone():  # every process plans and measures its own step, by itself
        plan = _plan(cfg, device, world, measure_steps, echo)
    grad_bytes = plan.pop("_grad_numel") * 4
    plan["allreduce"] = {"gradient_mb": _mb(grad_bytes), "measured": False}
    if joined:
        seconds = max(dist.all_gather_object(_time_allreduce(grad_bytes // 4, device, allreduce_repeats)))
        plan["allreduce"].update(measured=True, seconds_per_step=round(seconds, 4), repeats=allreduce_repeats)
        if "measured" in plan:
            step = plan["measured"]["seconds_per_step"]
            plan["allreduce"]["share_of_step"] = round(seconds / max(step + seconds, 1e-9), 3)
            per_step, steps = step + seconds, plan["steps_per_epoch"]
            plan["time_estimate_s"] = {"epoch": round(per_step * steps, 1), "total": round(per_step * steps * cfg.train.epochs, 1)}
    return plan


def _time_allreduce(numel: int, device: torch.device, repeats: int) -> float:
    """Seconds per all-reduce (sum) of ``numel`` fp32 values over the process group, after one warm-up."""
    buf = torch.ones(max(numel, 1), dtype=torch.float32, device=device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    tdist.all_reduce(buf)
    sync()
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(repeats):
        tdist.all_reduce(buf)
    sync()
    return (time.perf_counter() - t0) / max(repeats, 1)


def _plan(cfg: ExperimentConfig, device: torch.device, world: int, measure_steps: int, echo) -> dict[str, Any]:
    seed_everything(cfg.seed, cfg.deterministic)
    task = task_for(cfg, device, None, echo)
    splits = task.load()
    train = splits.train
    method = task.build_method(train).to(device)
    n_params = sum(p.numel() for p in method.parameters())
    n_train = sum(p.numel() for p in method.parameters() if p.requires_grad)
    n_buffers = sum(b.numel() * b.element_size() for b in method.buffers())
    local = cfg.train.batch_size // world
    from ..defenses import DEFENSES

    pairs = DEFENSES.build(cfg.defense.name, cfg.defense.params).train_pairs(len(train))  # CleanCLIP: its split
    steps = pairs // cfg.train.batch_size
    resident = train.resident_bytes + splits.test.resident_bytes  # data/split_info.py
    state = 4 * (n_params + n_train * (1 + OPTIMIZER_MOMENTS[cfg.train.optimizer])) + n_buffers
    plan: dict[str, Any] = {
        "config": cfg.to_dict(),
        "data": {"name": cfg.data.name, "train": len(train), "trained": pairs, "test": len(splits.test),
                 **train.storage()},  # streamed or held, the shard or file count, the phrase
        "processes": world, "device": str(device),
        "batch": {"global": cfg.train.batch_size, "per_process": local},
        "steps_per_epoch": steps, "epochs": cfg.train.epochs, "total_steps": steps * cfg.train.epochs,
        "memory_mb": {"parameters": _mb(4 * n_params), "model_and_optimizer_state": _mb(state),
                      "resident_data_uint8": _mb(resident)},
        "parameters": n_params, "_grad_numel": n_train,
    }
    if measure_steps > 0 and steps > 0:
        one = copy.deepcopy(cfg)  # the measured process draws its share of the global batch
        one.train.batch_size = local
        task.cfg = one
        plan["measured"] = _measure(task, method, train, one, device, measure_steps)
        per_step = plan["measured"]["seconds_per_step"]
        plan["time_estimate_s"] = {"epoch": round(per_step * steps, 1), "total": round(per_step * steps * cfg.train.epochs, 1)}
    return plan


def _measure(task: Any, method: Any, train: Any, cfg: ExperimentConfig, device: torch.device, n: int) -> dict[str, Any]:
    """Seconds per optimiser step (the run's batch source, loss, backward and step), after one warm-up step."""
    from ..defenses import DEFENSES

    batches = task.batches(method, train, DEFENSES.build("none", {}))
    trainer = Trainer(method, batches, cfg.train, device, None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    it = iter(batches.epoch(0))
    trainer.train_step(next(it))  # warm-up (kernels, allocator, loader workers)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0, done = time.perf_counter(), 0
    for batch in it:
        trainer.train_step(batch)
        done += 1
        if done == n:
            break
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    dt = (time.perf_counter() - t0) / max(done, 1)
    out = {"steps": done, "seconds_per_step": round(dt, 4), "samples_per_s": round(cfg.train.batch_size / max(dt, 1e-9), 1)}
    if device.type == "cuda":
        out["peak_gpu_memory_mb"] = _mb(torch.cuda.max_memory_allocated(device))
    return out


def format_plan(plan: dict[str, Any]) -> str:
    import yaml

    d, m, b = plan["data"], plan["memory_mb"], plan["batch"]
    lines = ["# resolved config", yaml.safe_dump(plan["config"], sort_keys=False).rstrip(), "", "# plan",
             f"data: {d['name']}: {d['train']} train / {d['test']} test, {d['held']}",
             *([f"defense: {plan['config']['defense']['name']} trains on {d['trained']} of the {d['train']} train "
                "pairs"] if d.get("trained", d["train"]) != d["train"] else []),
             f"processes: {plan['processes']} on {plan['device']}; batch {b['global']} global = {b['per_process']} per process",
             f"steps: {plan['steps_per_epoch']} per epoch × {plan['epochs']} epochs = {plan['total_steps']}",
             f"memory: parameters {m['parameters']} MB, model + optimiser state {m['model_and_optimizer_state']} MB, "
             f"resident data {m['resident_data_uint8']} MB ({plan['parameters']:,} parameters)"]
    if "measured" in plan:
        ms, t = plan["measured"], plan["time_estimate_s"]
        peak = f", peak GPU memory {ms['peak_gpu_memory_mb']} MB" if "peak_gpu_memory_mb" in ms else ""
        lines.append(f"measured: {ms['seconds_per_step']} s/step over {ms['steps']} steps "
                     f"({ms['samples_per_s']} samples/s per process){peak}")
    ar = plan.get("allreduce")
    if ar is not None:
        lines.append(allreduce_line(ar, plan["processes"]))
    if "measured" in plan:
        lines.append(f"time estimate: {t['epoch']} s per epoch, {t['total']} s in total " + (
            "(per process; the all-reduce added, without overlap)" if ar is not None and ar["measured"]
            else "(per process; gradient all-reduce not included)"))
    return "\n".join(lines)


def allreduce_line(ar: dict[str, Any], processes: int) -> str:
    """The plan's all-reduce line: measured (several processes) or the bytes with a note (one process)."""
    head = f"all-reduce: {ar['gradient_mb']} MB of fp32 gradients per step"
    if not ar["measured"]:
        moved = round(2 * (processes - 1) / processes * ar["gradient_mb"], 1)
        ring = f"; a ring all-reduce over {processes} processes sends (and receives) {moved} MB per process" \
            if processes > 1 else ""
        return (f"{head}{ring}; not measured with one process (start the dry run with torchrun / srun on the "
                "processes of the run to time it)")
    share = f", ≈ {100 * ar['share_of_step']:.1f}% of a step" if "share_of_step" in ar else ""
    return (f"{head}, measured {ar['seconds_per_step']} s per all-reduce over {processes} processes "
            f"(mean of {ar['repeats']} after a warm-up, slowest process){share} (an upper bound: DDP overlaps it "
            "with the backward)")
