"""The one training loop, shared by every method (SimCLR, MoCo v2, BYOL, CLIP, and training-time defenses).

The loop knows nothing about a method beyond :class:`~clpoison.methods.base.Method`: it draws batches from a
*batch source* (``len(source)`` steps per epoch, ``source.epoch(e)`` yields dicts on the device), calls the pure
``method.loss``, steps the optimiser and the per-step schedule, then ``method.update_state(aux)`` (queue
enqueue, memory-bank push) and ``method.after_optimizer_step`` (EMA).

It provides: SGD/LARS/AdamW, linear warm-up + cosine, AMP (bf16 on CUDA by default, fp16 with a grad scaler on
request, off on CPU), channels_last, a checkpoint every ``checkpoint_every`` epochs holding model, optimiser,
scheduler, scaler, RNG states (as tensors: the file loads with ``weights_only=True``), epoch, step and the run's
data fingerprint (so ``resume`` continues exactly where it stopped, and refuses a checkpoint of other data), a
progress bar and a JSONL metrics log (records past the checkpoint are dropped on resume; optional TensorBoard
scalars with ``train.tensorboard``); without a terminal (or with progress off) one line per epoch instead of the bar
(:func:`epoch_line`). A non-finite loss stops
training before the optimiser step with :class:`~clpoison.errors.TrainingDiverged` naming the step. Hooks (``on_epoch_start`` / ``on_epoch_end``) let defenses act between epochs, seeing the
training through a read-only :class:`~clpoison.contexts.EpochView` (:meth:`Trainer.view`), and a
``schedule`` factory (:mod:`clpoison.engine.schedules`) lets them supply the LR schedule.

Several processes (``torchrun``, SLURM; :mod:`clpoison.engine.distributed`): the loss runs behind DDP, each rank
draws its own shard of every batch (the batch source's job), rank 0 alone writes the log and the checkpoint
(which holds every rank's RNG state, so all ranks resume from it exactly), rank 0's buffers are copied to every
rank at the end of each epoch, and a hook marked ``main_only`` (periodic evaluation) runs on rank 0 only.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Optional, Protocol

import torch

from ..contexts import EpochView
from ..errors import ConfigError, TrainingDiverged
from ..methods.base import Method
from ..run_folder import CHECKPOINT
from ..utils.io import atomic_torch_save, atomic_write_text
from ..utils.faults import fault_point
from ..utils.dist import all_gather_object, all_reduce_mean, rank, sync_buffers, world_size
from ..utils.seed import get_rng_state, set_rng_state
from .checkpoint import read_checkpoint
from .distributed import wrap_for_training
from .optim import build_optimizer
from .schedules import EpochHook, ScheduleFactory, warmup_cosine_schedule

CHECKPOINT_NAME = CHECKPOINT
CHECKPOINT_VERSION = 2  # 2: RNG states as tensors/lists (weights_only loading), fingerprint


class BatchSource(Protocol):
    def __len__(self) -> int: ...

    def epoch(self, epoch: int): ...


@dataclass
class TrainConfig:
    epochs: int = 200
    batch_size: int = 512
    optimizer: str = "sgd"
    lr: float = 0.06
    lr_scaling: str = "linear"  # linear: lr·batch/256; none: lr as given
    momentum: float = 0.9
    weight_decay: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_epochs: float = 10.0
    min_lr_ratio: float = 0.0
    exclude_norm_bias: bool = True
    grad_clip: float = 0.0
    amp: str = "auto"  # auto | off | bf16 | fp16
    channels_last: str = "auto"  # auto | on | off
    checkpoint_every: int = 1
    log_every: int = 20
    progress: bool = True
    tensorboard: bool = False  # epoch scalars under OUT/tensorboard/ (needs the tensorboard package)

    def __post_init__(self) -> None:
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise ConfigError(f"train.epochs={self.epochs} must be a positive integer")
        if self.batch_size < 1:
            raise ConfigError(f"train.batch_size={self.batch_size} must be >= 1")
        for key in ("lr", "momentum", "weight_decay", "warmup_epochs", "min_lr_ratio", "grad_clip"):
            if not math.isfinite(float(getattr(self, key))):  # .inf / .nan would only fail deep in training
                raise ConfigError(f"train.{key}={getattr(self, key)} must be a finite number")
        if not self.lr > 0:
            raise ConfigError(f"train.lr={self.lr} must be > 0")
        if self.weight_decay < 0 or self.momentum < 0:
            key = "weight_decay" if self.weight_decay < 0 else "momentum"
            raise ConfigError(f"train.{key}={getattr(self, key)} must be >= 0")
        if self.warmup_epochs < 0:
            raise ConfigError(f"train.warmup_epochs={self.warmup_epochs} must be >= 0")
        if self.optimizer not in ("sgd", "lars", "adamw"):
            raise ConfigError(f"train.optimizer='{self.optimizer}' unknown; choose sgd, lars or adamw")
        if self.lr_scaling not in ("linear", "none"):
            raise ConfigError(f"train.lr_scaling='{self.lr_scaling}' unknown; choose linear or none")
        if self.amp not in ("auto", "off", "bf16", "fp16"):
            raise ConfigError(f"train.amp='{self.amp}' unknown; choose auto, off, bf16 or fp16")
        if self.channels_last not in ("auto", "on", "off"):
            raise ConfigError(f"train.channels_last='{self.channels_last}' unknown; choose auto, on or off")
        if self.checkpoint_every < 0 or self.log_every < 1:
            raise ConfigError("train.checkpoint_every must be >= 0 and train.log_every >= 1")
        self.betas = tuple(self.betas)  # type: ignore[assignment]

    @property
    def effective_lr(self) -> float:
        return self.lr * self.batch_size / 256 if self.lr_scaling == "linear" else self.lr

    def amp_dtype(self, device: torch.device) -> Optional[torch.dtype]:
        mode = self.amp
        if mode == "auto":
            mode = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "off"
        return {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[mode]

    def use_channels_last(self, device: torch.device, min_channels: Optional[int] = None) -> bool:
        """channels_last: measured faster for these conv nets on CPU (×1.6–2.7) and on CUDA with AMP.

        ``min_channels`` is the narrowest conv of the model (:func:`min_conv_channels`; for the ResNets and the
        ConvNet it equals ``model.width``). On the CPU, torch 2.13's oneDNN corrupts the heap in the backward of
        channels_last ResNets narrower than 16 channels for some batch sizes (reproduced: width 4, 8 and 12 at
        batch 37 abort with ``free(): invalid next size``), so ``auto`` keeps those models contiguous."""
        if self.channels_last == "off":
            return False
        if device.type == "cpu" and min_channels is not None and min_channels < 16:
            return False
        return self.channels_last == "on" or device.type in ("cpu", "cuda")


def progress_bar_on(progress: bool) -> bool:
    """A tqdm bar only when asked for and stderr is a terminal; otherwise (a log file, a pipe, ``--no-progress``)
    the trainer prints one line per epoch (:func:`epoch_line`) — no carriage returns in logs."""
    return bool(progress) and sys.stderr.isatty()


def epoch_line(method: Method, rec: dict, epochs: int, lr: float) -> str:
    """``simclr epoch 3/20: loss 4.1234, lr 0.0600, 812 images/s, 6.3 s, eval knn_top1 0.3120`` of an epoch record."""
    unit = "pairs" if getattr(method, "modality", "image") == "image-text" else "images"
    rate = rec.get("samples_per_s")
    evals = [f"{k[5:]} {v:.4f}" for k, v in rec.items() if k.startswith("eval_") and k != "eval_seconds"
             and isinstance(v, float)]
    return (f"{method.name} epoch {rec['epoch']}/{epochs}: loss {rec['loss']:.4f}, lr {lr:.4g}, "
            f"{'?' if rate is None else f'{rate:.0f}'} {unit}/s, {rec['epoch_seconds']:.1f} s"
            + (f", eval {', '.join(evals)}" if evals else ""))


def min_conv_channels(model: torch.nn.Module) -> Optional[int]:
    """Smallest output-channel count of the model's 2-D convolutions (``None`` if it has none)."""
    widths = [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    return min(widths) if widths else None


class Trainer:
    """Runs ``cfg.epochs`` epochs of ``method`` on ``batches``; checkpoints to ``out_dir`` and resumes from it."""

    def __init__(
        self,
        method: Method,
        batches: BatchSource,
        cfg: TrainConfig,
        device: torch.device,
        out_dir: Optional[Path] = None,
        config_snapshot: Optional[dict] = None,
        on_epoch_end: Optional[list[EpochHook]] = None,
        on_epoch_start: Optional[list[EpochHook]] = None,
        log_name: str = "metrics.jsonl",
        schedule: Optional[ScheduleFactory] = None,
        state: Optional[dict[str, Any]] = None,
        fingerprint: Optional[dict] = None,
        notify: Optional[Callable[[str], None]] = None,
    ) -> None:
        self.method = method.to(device)
        self.batches = batches
        self.cfg = cfg
        self.device = device
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.config_snapshot = config_snapshot or {}
        self.on_epoch_end = list(on_epoch_end or [])
        self.on_epoch_start = list(on_epoch_start or [])
        self.log_name = log_name
        self.extra_state = dict(state or {})  # checkpointed beside the model (state_dict / load_state_dict)
        self.fingerprint = fingerprint  # what the run trains on (data, poison); a checkpoint of other data is refused
        self.notify = notify or (lambda msg: None)
        if cfg.use_channels_last(device, min_conv_channels(self.method)):
            self.method.to(memory_format=torch.channels_last)
        self.rank, self.world_size = rank(), world_size()
        self.tensorboard = None
        if cfg.tensorboard and self.rank == 0 and self.out_dir is not None:
            from .tensorboard import EpochScalars

            self.tensorboard = EpochScalars(self.out_dir / "tensorboard")
        self.method, self.loss_fn = wrap_for_training(self.method, device)  # DDP when world size > 1
        self.steps_per_epoch = len(batches)
        if self.steps_per_epoch < 1:
            raise ConfigError("the dataset yields no full batch; lower train.batch_size")
        self.total_steps = cfg.epochs * self.steps_per_epoch
        self.base_lr = cfg.effective_lr
        self.optimizer = build_optimizer(
            cfg.optimizer,
            self.method.param_groups(cfg.weight_decay, cfg.exclude_norm_bias),
            self.base_lr,
            cfg.momentum,
            cfg.weight_decay,
            cfg.betas,
        )
        if schedule is None:
            self.scheduler = warmup_cosine_schedule(self.optimizer, self.steps_per_epoch, cfg.epochs,
                                                    cfg.warmup_epochs, cfg.min_lr_ratio)
        else:
            self.scheduler = schedule(self.optimizer, self.steps_per_epoch, cfg.epochs)
        self.amp_dtype = cfg.amp_dtype(device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        self.epoch = 0  # epochs completed
        self.step = 0
        self.history: list[dict] = []
        self.last_record: dict = {}  # the epoch record being built, for epoch_end hooks (e.g. its loss)
        self.train_seconds = 0.0
        self.stop_requested = False

    # -- checkpointing --------------------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Optional[Path]:
        return None if self.out_dir is None else self.out_dir / CHECKPOINT_NAME

    def state_dict(self) -> dict[str, Any]:
        return {
            "format_version": CHECKPOINT_VERSION,
            "method": self.method.name,
            "model": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "rng": get_rng_state(),
            **({"world_size": self.world_size, "rng_ranks": all_gather_object(get_rng_state())} if self.world_size > 1 else {}),
            "history": self.history,
            "train_seconds": self.train_seconds,
            "config": self.config_snapshot,
            "fingerprint": self.fingerprint,
            **({"extra_state": {k: v.state_dict() for k, v in self.extra_state.items()}} if self.extra_state else {}),
        }

    def save_checkpoint(self) -> None:
        if self.checkpoint_path is not None:
            state = self.state_dict()  # on every rank: it gathers their RNG states
            if self.rank == 0:
                atomic_torch_save(state, self.checkpoint_path)

    def load_checkpoint(self, path: Path) -> None:
        ckpt = read_checkpoint(path, map_location=self.device)
        if ckpt.get("method") != self.method.name:
            msg = f"checkpoint {path} is for method '{ckpt.get('method')}', not '{self.method.name}'; use another out directory"
            raise ConfigError(f"{msg} or pass overwrite=True", cli=f"{msg} or pass --overwrite")
        if self.fingerprint is not None and ckpt.get("fingerprint") != self.fingerprint:
            msg = f"the data changed since the interrupted run ({path} was trained on other data); use"
            raise ConfigError(f"{msg} overwrite=True to start again", cli=f"{msg} --overwrite to start again")
        if int(ckpt.get("world_size", 1)) != self.world_size:
            msg = (f"checkpoint {path} was written by {ckpt.get('world_size', 1)} processes, this run has "
                   f"{self.world_size}; resume with the same number (each process's data shard depends on it) or use")
            raise ConfigError(f"{msg} overwrite=True", cli=f"{msg} --overwrite")
        self.method.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        for k, obj in self.extra_state.items():
            if k not in ckpt.get("extra_state", {}):
                msg = f"checkpoint {path} holds no '{k}' state; use another out directory or pass"
                raise ConfigError(f"{msg} overwrite=True", cli=f"{msg} --overwrite")
            obj.load_state_dict(ckpt["extra_state"][k])
        self.epoch, self.step = int(ckpt["epoch"]), int(ckpt["step"])
        self.history = list(ckpt.get("history", []))
        self.train_seconds = float(ckpt.get("train_seconds", 0.0))
        set_rng_state(ckpt["rng_ranks"][self.rank] if self.world_size > 1 else ckpt["rng"])
        self._truncate_log()

    def _truncate_log(self) -> None:
        """Drop log records written after the checkpoint (steps the resumed run will log again)."""
        if self.out_dir is None or self.rank != 0 or not (self.out_dir / self.log_name).exists():
            return
        keep = []
        for line in (self.out_dir / self.log_name).read_text(encoding="utf-8").splitlines():
            try:
                if int(json.loads(line).get("step", 0)) <= self.step:
                    keep.append(line)
            except (ValueError, AttributeError, TypeError):
                continue  # a line cut short by the kill
        atomic_write_text(self.out_dir / self.log_name, "".join(f"{ln}\n" for ln in keep))

    # -- logging --------------------------------------------------------------------------------------------
    def log(self, record: dict) -> None:
        if self.out_dir is None or self.rank != 0:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / self.log_name, "a") as f:
            f.write(json.dumps(record) + "\n")
        fault_point("log")

    # -- the loop -------------------------------------------------------------------------------------------
    def train_step(self, batch: dict[str, Any]) -> tuple[float, dict]:
        self.method.train()
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            loss, logs, aux = self.loss_fn(batch)
        if not torch.isfinite(loss):  # checked before the step: the weights and the last checkpoint stay good
            kept = (f"the last good checkpoint (epoch {self.epoch}) is kept in {self.out_dir}"
                    if self.checkpoint_path is not None and self.checkpoint_path.exists() else "no checkpoint was written yet")
            raise TrainingDiverged(
                f"the loss became {loss.item()} at epoch {self.epoch + 1}, step {self.step + 1}; lower train.lr "
                f"(now {self.cfg.lr}), set train.grad_clip or use train.amp=off ({kept})"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.method.parameters(), self.cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        self.method.update_state(aux)
        self.method.after_optimizer_step(self.step / self.total_steps)
        return loss.detach(), logs

    def fit(self, resume: bool = True) -> list[dict]:
        from tqdm.auto import tqdm

        if resume and self.checkpoint_path is not None and self.checkpoint_path.exists():
            self.load_checkpoint(self.checkpoint_path)
            self.notify(f"resuming from epoch {self.epoch}/{self.cfg.epochs} (step {self.step}) of {self.checkpoint_path}")
        else:
            self._truncate_log()  # records of a run killed before its first checkpoint: this run logs them again
        bar_on = progress_bar_on(self.cfg.progress)
        while self.epoch < self.cfg.epochs and not self.stop_requested:
            e = self.epoch
            extra: dict = {}
            for hook in self._hooks(self.on_epoch_start):
                extra.update(hook(self.view(e), e) or {})
            t0 = time.perf_counter()
            losses = []
            bar = tqdm(
                self.batches.epoch(e),
                total=self.steps_per_epoch,
                desc=f"{self.method.name} epoch {e + 1}/{self.cfg.epochs}",
                disable=not bar_on or self.rank != 0,
                leave=False,
                dynamic_ncols=True,
            )
            for batch in bar:
                loss, logs = self.train_step(batch)
                fault_point("train-step")
                losses.append(loss)
                if self.step % self.cfg.log_every == 0:
                    lv = float(loss)
                    bar.set_postfix(loss=f"{lv:.4f}")
                    self.log({"step": self.step, "epoch": e + 1, "loss": lv, "lr": self.scheduler.get_last_lr()[0], **logs})
            bar.close()
            dt = time.perf_counter() - t0
            self.train_seconds += dt
            self.epoch = e + 1
            rec = {
                "epoch": self.epoch,
                "step": self.step,
                "loss": float(all_reduce_mean(torch.stack(losses).float().mean())) if losses else math.nan,
                "epoch_seconds": dt,
                "samples_per_s": self.steps_per_epoch * self.cfg.batch_size / dt if dt > 0 else None,
                **extra,
            }
            self.last_record = rec
            sync_buffers(self.method)  # one model on every rank for the hooks, the evaluation and the checkpoint
            for hook in self._hooks(self.on_epoch_end):
                rec.update(hook(self.view(self.epoch, rec), self.epoch) or {})
            self.history.append(rec)
            self.log({"event": "epoch", **rec})
            if not bar_on:  # no bar (not a terminal, or progress off): one line per epoch
                self.notify(epoch_line(self.method, rec, self.cfg.epochs, self.scheduler.get_last_lr()[0]))
            if self.tensorboard is not None:
                self.tensorboard.write(rec, self.scheduler.get_last_lr()[0], self.method.name)
            if self.cfg.checkpoint_every and (self.epoch % self.cfg.checkpoint_every == 0 or self.epoch == self.cfg.epochs):
                self.save_checkpoint()
        if self.tensorboard is not None:
            self.tensorboard.close()
        return self.history

    def view(self, epoch: int, record: Optional[dict] = None) -> EpochView:
        """What an epoch hook sees: read-only proxies of the history and of the epoch record being built."""
        return EpochView(epoch=epoch, epochs=self.cfg.epochs, step=self.step, total_steps=self.total_steps,
                         history=tuple(MappingProxyType(h) for h in self.history),
                         record=MappingProxyType(record if record is not None else {}), amp_dtype=self.amp_dtype,
                         notify=self.notify, log=self.log)

    def _hooks(self, hooks: list[EpochHook]) -> list[EpochHook]:
        """The hooks this rank runs: all of them, less those marked ``main_only`` on ranks other than 0."""
        return [h for h in hooks if self.rank == 0 or not getattr(h, "main_only", False)]
