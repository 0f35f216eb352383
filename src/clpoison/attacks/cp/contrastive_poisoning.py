"""Contrastive Poisoning (He, Zha, Katabi, "Indiscriminate Poisoning Attacks on Unsupervised Contrastive
Learning", ICLR 2023, arXiv 2202.11202; official code ``kaiwenzha/contrastive-poisoning``; ``algorithms.md`` §4).

An *indiscriminate* (availability) attack: every training image carries an imperceptible ‖δ‖∞ ≤ ε = 8/255
perturbation, crafted by min–min optimisation of the attacker's contrastive loss (:mod:`.noise_crafting`), so the
victim's encoder learns the noise instead of the images and its linear probe on clean labels drops (paper, CIFAR-10
ResNet-18 SimCLR: ≈ 92 % → 44.9 % under CP-S).

* ``cp-sample`` (CP-S): one δ per image; needs no labels. README recipe: 200 rounds, whole-epoch model and noise
  phases, 5 PGD steps of 0.1·ε. ``init`` starts each image from its class's δ of a CP-C result — the paper's
  stronger variant: a path (a ``delta.npz``, or the export / run folder holding it), or
  ``{attack: cp-class, params: {...}}`` to craft that CP-C first in the same run (its ``epsilon``, ``batch_size``
  and ``attacker`` default to the CP-S ones; it checkpoints and resumes on its own, its δ is written as
  ``init_delta.npz`` and its record is ``details.init`` of the manifest).
* ``cp-class`` (CP-C): one δ per class. README recipe: 1000 rounds of 20 model steps and 20 noise steps, 1 PGD step.

The attacker's method (SimCLR, MoCo v2 or BYOL) is ``attacker`` (:class:`~clpoison.engine.surrogate.Surrogate`),
trained through the one engine. BYOL attackers use 1 PGD step of 0.02 (the official ``main.py`` override) unless
``byol_override: false``. The output is quantised to uint8 (as a released dataset is), so the stored perturbation is
at most round(255·ε) levels. Artifacts: ``delta.npz`` (δ in [−1, 1] as float32, ``epsilon``, ``classwise``,
``class_names``) beside ``manifest.json``; ``details`` of the manifest hold the crafting record, with the
shortcut diagnostic's trace (``details.trace``: loss gap ``L(x+εδ) − L(x)``, sign consistency, mean |ε·δ| per round; :mod:`.craft_diagnostic`) and the gates
(``gate``) it passed or failed. After pretraining, :meth:`ContrastivePoisoning.evaluate` adds
``linear_top1_poisoned_probe``: a linear probe fitted on the *poisoned* training images.

Example (CLI)::

    clpoison poison cp-sample --data cifar10-subset --out runs/cp --preset cp-sample-small
    clpoison run cp.yaml   # with attack: {name: cp-sample, params: {...}} the run crafts in memory first
"""

from __future__ import annotations

import hashlib
import io
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

from ...contexts import EvalContext, PoisonContext
from ...data.augment import TwoViewAugment
from ...data.datasets import ImageDataset, ImageSplits
from ...errors import ConfigError, DataError
from ...eval.encoder_eval import poisoned_probe_metrics
from ...utils.seed import seed_everything
from ..base import ATTACKS, Attack, AttackParams, PoisonResult
from .craft_diagnostic import parse_gates, trace_of
from ...poisoned.manifest import build_manifest
from .noise_crafting import CraftSettings, PoisonNoise, craft
from ..ssl_backdoor_base import require_images
from ...engine.surrogate import Surrogate


@dataclass
class CPSampleParams(AttackParams):
    epsilon: float = 8 / 255
    rounds: int = 200
    model_steps: int = 1000  # capped at one pass over the data (official: 1000 ≈ the whole epoch)
    noise_steps: int = 1000
    pgd_steps: int = 5
    step_size: float = 0.1
    batch_size: int = 512
    dual_branch: bool = False  # official --allow_mmt_grad (MoCo v2 only has an effect)
    noise_updates_state: bool = True  # official: noise-phase forwards also move MoCo's queue / BYOL's EMA
    byol_override: bool = True  # official main.py: a BYOL attacker uses pgd_steps 1, step_size 0.02
    init: Union[str, dict, None] = None  # CP-S only: a CP-C delta.npz / folder, or {attack: cp-class, params: {...}}
    gate: Union[dict, list, None] = None  # {round, max_gap, action: abort|warn} or a list: checks of the loss gap
    checkpoint_every: int = 1  # crafting rounds between checkpoints (work folder of the run / export)
    attacker: dict = field(default_factory=dict)  # Surrogate: method, model, augment, train

    def __post_init__(self) -> None:
        if isinstance(self.epsilon, bool) or not 0 < self.epsilon <= 1:
            raise ConfigError(f"attack.params.epsilon={self.epsilon} must be in (0, 1] (the paper's is 8/255 = 0.0314)")
        for k in ("rounds", "model_steps", "noise_steps", "pgd_steps", "batch_size"):
            if getattr(self, k) < 1:
                raise ConfigError(f"attack.params.{k}={getattr(self, k)} must be >= 1")
        if not self.step_size > 0:
            raise ConfigError(f"attack.params.step_size={self.step_size} must be > 0 (the paper's is 0.1)")
        if self.checkpoint_every < 0:
            raise ConfigError(f"attack.params.checkpoint_every={self.checkpoint_every} must be >= 0")
        if isinstance(self.init, str) and not Path(self.init).expanduser().exists():
            raise ConfigError(f"attack.params.init='{self.init}' does not exist; give a cp-class export or run folder")
        self.surrogate = Surrogate.from_dict(self.attacker, "attack.params.attacker")
        self.gates = parse_gates(self.gate)
        self.init_params = self.crafted_init() if isinstance(self.init, dict) else None

    def crafted_init(self) -> "CPClassParams":
        """The CP-C to craft first (``init: {attack: cp-class, params}``); epsilon, batch size, attacker inherited."""
        assert isinstance(self.init, dict)
        if set(self.init) - {"attack", "params"} or self.init.get("attack") != "cp-class":
            raise ConfigError("attack.params.init must be a path or {attack: cp-class, params: {...}} (the CP-C to craft "
                              f"first); got keys {sorted(self.init)} with attack={self.init.get('attack')!r}")
        params = self.init.get("params") or {}
        if not isinstance(params, dict):
            raise ConfigError("attack.params.init.params must be a mapping of cp-class parameters")
        inherited = {"epsilon": self.epsilon, "batch_size": self.batch_size, "attacker": self.attacker}
        return CPClassParams.from_dict({**inherited, **params}, "attack.params.init.params")

    def settings(self) -> CraftSettings:
        pgd, step = self.pgd_steps, self.step_size
        if self.byol_override and self.surrogate.method["name"] == "byol":
            pgd, step = 1, 0.02
        return CraftSettings(self.epsilon, self.rounds, self.model_steps, self.noise_steps, pgd, step,
                             self.batch_size, self.dual_branch, self.noise_updates_state)


@dataclass
class CPClassParams(CPSampleParams):
    rounds: int = 1000
    model_steps: int = 20
    noise_steps: int = 20
    pgd_steps: int = 1

    def __post_init__(self) -> None:
        if self.init is not None:
            raise ConfigError("attack.params.init is for cp-sample (start from a CP-C result); cp-class starts at random")
        super().__post_init__()


def load_class_delta(path: Union[str, bytes], num_classes: int, shape: tuple[int, ...]) -> torch.Tensor:
    """The class-wise δ (C, 3, H, W) of a CP-C result (``delta.npz``, a folder holding one, or its bytes); nothing
    unpickled."""
    if isinstance(path, bytes):
        p: Any = io.BytesIO(path)
        path = "(crafted in this run)"
    else:
        p = Path(path).expanduser()
        p = p / "delta.npz" if p.is_dir() else p
        if not p.exists():
            raise ConfigError(f"attack.params.init='{path}': no delta.npz there; give a cp-class export or run folder")
    try:
        with np.load(p, allow_pickle=False) as z:
            delta, classwise = z["delta"], bool(z["classwise"])
    except (KeyError, ValueError, OSError) as e:
        raise ConfigError(f"attack.params.init='{path}' is not a clpoison delta.npz ({type(e).__name__})") from None
    if not classwise or tuple(delta.shape) != (num_classes, *shape):
        raise ConfigError(f"attack.params.init='{path}': expected a class-wise δ of shape {(num_classes, *shape)}, "
                          f"got {'class' if classwise else 'sample'}-wise {tuple(delta.shape)}")
    return torch.from_numpy(np.ascontiguousarray(delta)).float().clamp(-1, 1)


def without_gates(params: dict) -> dict:
    """The params that decide δ: all but the gates (also those of a CP-C crafted first)."""
    out = {k: v for k, v in params.items() if k != "gate"}
    if isinstance(out.get("init"), dict) and isinstance(out["init"].get("params"), dict):
        out["init"] = {**out["init"], "params": without_gates(out["init"]["params"])}
    return out


def delta_npz(noise: PoisonNoise, class_names: list[str]) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, delta=noise.delta.detach().float().cpu().numpy(), epsilon=np.float64(noise.epsilon),
                        classwise=np.bool_(noise.classwise), class_names=np.array(list(class_names), dtype=str))
    return buf.getvalue()


class ContrastivePoisoning(Attack):
    """Shared by CP-S and CP-C: craft δ with the attacker's method, quantise, manifest + ``delta.npz``."""

    modality = "image"
    version = "1"
    classwise = False

    def poison(self, splits: Any, seed: int, context: Optional[PoisonContext] = None) -> PoisonResult:
        ctx = context or PoisonContext()
        p = self.params
        splits = require_images(splits, self.name)
        train = splits.train
        if train.sizes is not None and not bool((train.sizes == torch.tensor(train.images.shape[2:])).all()):
            raise DataError(f"{self.name} needs training images of one size; these sit on a padded canvas")
        labels = train.labels
        if self.classwise and (labels is None or len(labels) == 0 or bool((labels < 0).any()) or not train.class_names):
            raise DataError(f"{self.name} needs a class label for every training image; use cp-sample for unlabelled data")
        shape = tuple(train.images.shape[1:])
        init, artifacts, init_details = self.initial_delta(splits, seed, ctx)
        t0 = time.perf_counter()
        seed_everything(seed)
        device = ctx.device or torch.device("cpu")
        g = torch.Generator().manual_seed(int(seed))
        noise = PoisonNoise(train.num_classes if self.classwise else len(train), shape, p.epsilon,
                            labels if self.classwise else None, g)
        if init is not None:
            noise.delta.copy_(init[labels])
        surrogate = p.surrogate
        method = surrogate.build_method()
        augment = TwoViewAugment(surrogate.augment_config())
        settings = p.settings()
        tcfg = surrogate.train_config(p.rounds, p.batch_size, progress=bool(ctx.progress),
                                      checkpoint_every=p.checkpoint_every)
        snapshot = {"attack": self.name, "params": without_gates(p.to_dict()), "seed": int(seed),
                    "source": {"n": len(train), "shape": list(shape)}}  # a changed gate resumes the same crafting
        work = ctx.work_dir
        work = Path(work) / self.name if work is not None and init_details is not None else work
        history = craft(method, noise, train.images, augment, settings, tcfg, torch.device(device), seed, work,
                        snapshot, ctx.echo, bool(ctx.progress), p.gates, self.name)
        images = noise.quantised(train.images)
        poisoned = ImageSplits(ImageDataset(images, labels.clone(), list(train.class_names), train.name, None), splits.test,
                               dict(splits.source))
        levels = int((images.int() - train.images.int()).abs().max()) if len(images) else 0
        art = delta_npz(noise, train.class_names)
        last = history[-1] if history else {}
        details = {
            "classwise": self.classwise, "rounds": len(history), "craft_seconds": round(time.perf_counter() - t0, 3),
            "noise_images_per_s": last.get("noise_images_per_s"), "max_abs_levels": levels,
            "model_loss_last": last.get("loss"), "noise_loss_first": last.get("noise_loss_first"),
            "loss_gap_last": last.get("loss_gap"), "sign_consistency_last": last.get("sign_consistency"),
            "trace": trace_of(history), "gates": [{**g.to_dict(), "passed": h.get("gate_passed")} for g in p.gates
                                                  for h in history[g.round - 1:g.round]],
            "init": init_details,
            "noise_loss_last": last.get("noise_loss_last"), "delta_abs_mean_levels": last.get("delta_abs_mean"),
            "attacker": {"method": surrogate.method, "model": surrogate.model}, "effective_pgd_steps": settings.pgd_steps,
            "effective_step_size": settings.step_size, "delta_sha256": hashlib.sha256(art).hexdigest(),
            "history": [{k: v for k, v in h.items() if isinstance(v, (int, float))} for h in history],
        }
        manifest = build_manifest(attack=self.name, attack_version=self.version, params=p.to_dict(), seed=seed,
                                  source=splits, output=poisoned, poisoned_indices=range(len(train)), details=details)
        return PoisonResult(poisoned, manifest, {"delta.npz": art, **artifacts})

    def initial_delta(self, splits: Any, seed: int, ctx: PoisonContext) -> tuple[Optional[torch.Tensor], dict, Optional[dict]]:
        """CP-S's start (``init``): the class-wise δ (C, 3, H, W) of a CP-C result, or None (U[−1, 1]); with
        ``init: {attack: cp-class, ...}`` that CP-C is crafted here first (in ``work_dir/cp-class``), and its δ
        (``init_delta.npz``) and record come back too."""
        p, train = self.params, splits.train
        shape = tuple(train.images.shape[1:])
        if not getattr(p, "init", None):
            return None, {}, None
        if not isinstance(p.init, dict):
            return load_class_delta(p.init, train.num_classes, shape), {}, None
        work = ctx.work_dir
        res = CPClass(p.init_params).poison(splits, seed, replace(ctx, work_dir=None if work is None else Path(work) / "cp-class"))
        art = res.artifacts["delta.npz"]
        details = {"attack": "cp-class", "params": p.init_params.to_dict(), **res.manifest["details"]}
        return load_class_delta(art, train.num_classes, shape), {"init_delta.npz": art}, details

    def evaluate(self, context: EvalContext) -> dict[str, Any]:
        """``linear_top1_poisoned_probe``: the probe fitted on the poisoned training images (the released data)."""
        return poisoned_probe_metrics(context)


@ATTACKS.register("cp-sample")
class CPSample(ContrastivePoisoning):
    """CP-S: sample-wise contrastive poisoning (one δ per image)."""

    name = "cp-sample"
    Params = CPSampleParams


@ATTACKS.register("cp-class")
class CPClass(ContrastivePoisoning):
    """CP-C: class-wise contrastive poisoning (one δ per class)."""

    name = "cp-class"
    Params = CPClassParams
    classwise = True
