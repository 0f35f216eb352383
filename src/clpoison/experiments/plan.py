"""``clpoison run CONFIG --dry-run``: what a run would do, without training it.

:func:`plan_experiment` resolves the config, finds the data (counts the streamed shards' samples, or loads the
resident splits), builds the method and its batch source exactly as the run would, and reports

* the data found, the processes (``WORLD_SIZE`` of torchrun / SLURM, 1 otherwise: ``RANK=0 WORLD_SIZE=8 clpoison run
  ... --dry-run`` plans for 8 processes from one), the global and per-process batch, steps per epoch and in total;
* a memory estimate: parameters, gradients and optimiser moments (fp32), the resident data (uint8) — and, on
  CUDA, the peak memory of the measured steps (activations included);
* a time estimate from a few measured optimiser steps on this process (after one warm-up step): seconds per step
  × steps per epoch × epochs. On several processes each one runs that many steps on its share of the batch; the
  gradient all-reduce is not measured (a dry run never joins a process group).

Nothing is written: no output folder, no checkpoint, no log.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import torch

from ..engine.trainer import Trainer
from ..utils.device import resolve_device
from ..utils.dist import env_from_environ
from ..utils.seed import seed_everything
from .config import ExperimentConfig
from .tasks import task_for

OPTIMIZER_MOMENTS = {"sgd": 1, "lars": 1, "adamw": 2}


def _mb(n_bytes: float) -> float:
    return round(n_bytes / 2**20, 1)


def plan_experiment(cfg: ExperimentConfig, measure_steps: int = 2, echo=lambda s: None) -> dict[str, Any]:
    device = resolve_device(cfg.device)
    env = env_from_environ()
    world = 1 if env is None else env.world_size
    if cfg.train.batch_size % world:
        from ..errors import ConfigError

        raise ConfigError(f"train.batch_size={cfg.train.batch_size} is not divisible by the {world} processes; "
                          f"use a multiple of {world}")
    seed_everything(cfg.seed, cfg.deterministic)
    task = task_for(cfg, device, None, echo)
    splits = task.load()
    train = splits.train
    streamed = bool(getattr(train, "streaming", False))
    method = task.build_method(train).to(device)
    n_params = sum(p.numel() for p in method.parameters())
    n_train = sum(p.numel() for p in method.parameters() if p.requires_grad)
    n_buffers = sum(b.numel() * b.element_size() for b in method.buffers())
    local = cfg.train.batch_size // world
    steps = len(train) // cfg.train.batch_size
    resident = 0 if streamed else sum(getattr(d, "images", torch.empty(0)).numel() for d in (train, splits.test)
                                      if isinstance(getattr(d, "images", None), torch.Tensor))
    state = 4 * (n_params + n_train * (1 + OPTIMIZER_MOMENTS[cfg.train.optimizer])) + n_buffers
    plan: dict[str, Any] = {
        "config": cfg.to_dict(),
        "data": {"name": cfg.data.name, "train": len(train), "test": len(splits.test), "streamed": streamed,
                 **({"shards": len(train.shards)} if streamed else {})},
        "processes": world, "device": str(device),
        "batch": {"global": cfg.train.batch_size, "per_process": local},
        "steps_per_epoch": steps, "epochs": cfg.train.epochs, "total_steps": steps * cfg.train.epochs,
        "memory_mb": {"parameters": _mb(4 * n_params), "model_and_optimizer_state": _mb(state),
                      "resident_data_uint8": _mb(resident)},
        "parameters": n_params,
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
             f"data: {d['name']}: {d['train']} train / {d['test']} test" + (
                 f", streamed from {d['shards']} shards" if d["streamed"] else ", held in memory"),
             f"processes: {plan['processes']} on {plan['device']}; batch {b['global']} global = {b['per_process']} per process",
             f"steps: {plan['steps_per_epoch']} per epoch × {plan['epochs']} epochs = {plan['total_steps']}",
             f"memory: parameters {m['parameters']} MB, model + optimiser state {m['model_and_optimizer_state']} MB, "
             f"resident data {m['resident_data_uint8']} MB ({plan['parameters']:,} parameters)"]
    if "measured" in plan:
        ms, t = plan["measured"], plan["time_estimate_s"]
        peak = f", peak GPU memory {ms['peak_gpu_memory_mb']} MB" if "peak_gpu_memory_mb" in ms else ""
        lines.append(f"measured: {ms['seconds_per_step']} s/step over {ms['steps']} steps "
                     f"({ms['samples_per_s']} samples/s per process){peak}")
        lines.append(f"time estimate: {t['epoch']} s per epoch, {t['total']} s in total "
                     "(per process; gradient all-reduce not included)")
    return "\n".join(lines)
