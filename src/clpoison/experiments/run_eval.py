"""``clpoison evaluate RUN``: re-evaluate a finished run's checkpoint — its clean metrics (with ``key=value``
overrides, e.g. other ``eval.sets``), **its attack's metrics** from the run's ``manifest.json`` (the recorded
trigger, target and victims: :meth:`~clpoison.attacks.base.Attack.restore`), and with ``control="random-init"`` the
same evaluation of an *untrained* model of the run's architecture (same seed; CLIP keeps the run's tokenizer), so
every control is one command instead of a training run. ``manifest`` names another run's (or export's) manifest:
its attack is rebuilt from the manifest's own parameters, so a clean model is scored against a poisoned run's
trigger, target and victims (the clean-model ASR / targeted floor) without training anything.

Targeted victims are rows of the run's test split (its attack set): on another test split (the fingerprint
recorded in the manifest differs) targeted success is not measured, and that is said (``skipped``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

from ..attacks import ATTACKS
from ..poisoned.manifest import fingerprint, in_class_order, read_manifest
from ..errors import ConfigError
from ..methods.build import build_method
from ..utils.device import resolve_device
from ..utils.seed import seed_everything
from .config import build_config
from .tasks import task_for

CONTROLS = ("random-init",)


def evaluate_run(path: Path, ckpt: dict, overrides: Sequence[str] = (), manifest: Optional[str] = None,
                 control: Optional[str] = None) -> dict[str, Any]:
    """``{"checkpoint", "control", "metrics", "config", "skipped", ["eval_sets", "attack_set"]}`` of one run."""
    if control is not None and control not in CONTROLS:
        raise ConfigError(f"--control {control} unknown; choose one of: {', '.join(CONTROLS)}")
    cfg = build_config(dict(ckpt["config"]), list(overrides))
    task = task_for(cfg, resolve_device(cfg.device))  # stdout is the JSON
    method = task.method_from_checkpoint(ckpt, f"checkpoint '{path}'")
    if control == "random-init" and getattr(method, "own_tokenizer", False):
        raise ConfigError("--control random-init rebuilds clpoison's own architectures untrained; a pretrained CLIP "
                          "(model.init) has no untrained state: evaluate the bare model instead")
    if control == "random-init":
        seed_everything(cfg.seed, cfg.deterministic)
        c = cfg
        method = build_method(c.method.name, c.method.params, {"arch": c.model.arch, "width": c.model.width,
                                                              "stem_stride": c.model.stem_stride},
                              **({"tokenizer": method.tokenizer} if getattr(method, "tokenizer", None) else {}))
        method = method.to(task.device)
    if manifest and Path(manifest).is_file():
        read_manifest(manifest)  # validated whole before any evaluation
    splits = task.load()
    metrics, extras = task.evaluate(method, splits)
    man_path = Path(manifest) if manifest else Path(path).parent / "manifest.json"
    if manifest and not man_path.is_file():
        raise ConfigError(f"manifest '{man_path}' does not exist; check the path")
    attack = None
    if manifest:  # any attack's manifest: e.g. a clean model scored against a poisoned run's trigger / victims
        man = read_manifest(man_path)
        name = (man.get("attack") or {}).get("name")
        if name not in ATTACKS:
            raise ConfigError(f"manifest '{man_path}' names no known attack ({name!r})")
        attack = ATTACKS.build(name, man.get("params") or {})
    elif cfg.attack.name != "none":
        if not man_path.is_file():
            raise ConfigError(f"the run's attack is '{cfg.attack.name}' but '{man_path}' is missing; pass --manifest")
        man = read_manifest(man_path)
        attack = ATTACKS.build(cfg.attack.name, cfg.attack.params)
    if attack is not None:
        attack.restore(man)
        names = list(man.get("source", {}).get("class_names") or [])
        same_test = fingerprint(in_class_order(splits.test, names)) == man.get("source", {}).get("fingerprint", {}).get("test")
        if not same_test and getattr(attack, "victims", None):
            attack.victims = []
            task.skip("targeted_success_rate", "the victims are rows of the run's own test split, and this test "
                      "split differs from it (manifest fingerprint)")
        attack_m = attack.evaluate(task.context(method, splits, None, extras))
        metrics.update(attack_m)
        task.attack_metrics(attack.name, attack_m)
    return {"checkpoint": str(path), "control": control, "metrics": metrics, "config": cfg.to_dict(),
            **task.extra_results()}
