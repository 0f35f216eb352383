"""What the benchmark scripts under ``benchmarks/`` share: running a named config (reusing a finished run of the
same config), per-seed statistics, ``attack.params.*`` overrides, and the shared settings of several scripts
(the Carlini clean-data control, the CorruptEncoder rows). Scripts import it from the installed package.

Example::

    >>> stats([0.5, 0.7])["mean"]
    0.6
    >>> split_overrides(["attack.params.trigger.size=8", "train.epochs=2"], {"trigger": {"size": 4}})
    ({'trigger': {'size': 8}}, ['train.epochs=2'])
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import yaml

from ..attacks import ATTACKS
from ..errors import ClpoisonError, ConfigError
from ..utils.io import dumps_json
from .config import build_config, load_preset
from .poison import export_attack
from .runner import run_or_reuse

CORRUPTENCODER_PRESET = "corruptencoder-small"
CORRUPTENCODER_ROWS = ("clean", "ssl_backdoor", "poisoned_encoder", "corruptencoder", "corruptencoder_plus",
                       "corruptencoder_localized_cropping")
_CE_COMMON = ("target", "poison_rate", "poison_count", "trigger", "eval_seed", "zscore_images", "target_in_pretraining")
#: SSL-Backdoor in the paper's setting (target class out of pretraining): added, up-sampled copies of withheld
#: target-class images — 64 px beside 32-px clean images, the size of CorruptEncoder's objects (object_width 64)
_SSLB_OUT_OF_PRETRAINING = {"mode": "add", "poison_scale": 2.0}


def run_named(name: str, data: dict, overrides: list[str], work: Path,
              echo: Optional[Callable[[str], None]] = print, reuse_only: bool = False) -> tuple[dict, bool]:
    """``(results, reused)`` of the config ``data`` + ``overrides`` (progress bar off) in ``work/name``; a fresh
    run prints its time and float metrics. ``reuse_only``: never train (one ConfigError line if not finished)."""
    cfg = build_config({**data, "name": name}, ["train.progress=false", *overrides])
    t0 = time.time()
    res, reused = run_or_reuse(cfg, Path(work) / name, reuse_only=reuse_only)
    if not reused and echo is not None:
        echo(f"{name}: {time.time() - t0:.0f}s " + json.dumps(
            {k: v for k, v in res["metrics"].items() if isinstance(v, float)}, sort_keys=True))
    return res, reused


def reuse_or_export(attack: str, params: dict, data: str, out: Path, seed: int, size: Optional[int],
                    reuse_only: bool = False, **kw: Any) -> dict:
    """The manifest of the poisoned export of ``attack`` with exactly these params and seed in ``out``: reused when
    its manifest says so, else written afresh (``kw``: more :func:`~clpoison.experiments.poison.export_attack`
    arguments, e.g. ``label_column``, ``test_path``); ``reuse_only``: never export (one ConfigError line)."""
    atk = ATTACKS.build(attack, params)
    man = Path(out) / "manifest.json"
    if man.exists():
        m = json.loads(man.read_text())
        if m.get("params") == json.loads(dumps_json(atk.params.to_dict())) and m.get("seed") == seed:
            return m
    if reuse_only:
        raise ConfigError(f"'{out}' holds no {attack} export of these params and seed (reuse only: nothing is "
                          "exported); give the work folder of the run that wrote it")
    return export_attack(atk, data, Path(out), seed, image_size=size, overwrite=True, progress=False, **kw)[1]


def mean(xs: list) -> float:
    """Mean of the values that are not ``None`` (NaN if none)."""
    xs = [x for x in xs if x is not None]
    return statistics.fmean(xs) if xs else float("nan")


def stats(xs: list) -> dict:
    """``{"mean", "std", "per_seed"}`` of the values that are not ``None`` (std 0 for a single value)."""
    xs = [float(x) for x in xs if x is not None]
    return {"mean": statistics.fmean(xs) if xs else float("nan"),
            "std": statistics.stdev(xs) if len(xs) > 1 else 0.0, "per_seed": xs}


def split_overrides(items: list[str], params: dict, prefix: str = "attack.params.") -> tuple[dict, list[str]]:
    """``prefix*`` overrides applied to a copy of ``params`` (dotted keys go into nested mappings); the rest are
    returned as config overrides."""
    params = json.loads(json.dumps(params))
    rest = []
    for o in items:
        if o.startswith(prefix):
            key, raw = o[len(prefix):].split("=", 1)
            *path, last = key.split(".")
            node = params
            for part in path:
                node = node.setdefault(part, {})
            node[last] = yaml.safe_load(raw)
        else:
            rest.append(o)
    return params, rest


def work_dir(out: Path, work: Optional[str]) -> Path:
    """The run folders of a benchmark: ``--work`` or ``OUT`` without suffix + ``_runs``."""
    out = Path(out)
    return Path(work) if work else out.with_name(out.stem + "_runs")


def carlini_clean_control() -> dict:
    """Config of the clean-data control run (``clean_s{seed}``): plain clip-small on unpoisoned pairs, evaluated
    with the small presets' backdoor trigger and targeted victims (``attack.name: carlini-control``)."""
    return {"preset": "clip-small", "attack": {"name": "carlini-control", "params": {
        "backdoor": load_preset("carlini-backdoor-small")["attack"]["params"],
        "targeted": load_preset("carlini-targeted-small")["attack"]["params"]}}}


def corruptencoder_rows(rows: str) -> list[str]:
    """The rows named in a comma-separated list; an unknown one is a ConfigError naming the choices."""
    out = [r for r in rows.split(",") if r]
    bad = sorted(set(out) - set(CORRUPTENCODER_ROWS))
    if bad:
        raise ConfigError(f"unknown rows {bad}; choose from {', '.join(CORRUPTENCODER_ROWS)}")
    return out


def corruptencoder_row_config(row: str, ce: dict) -> dict:
    """The config mapping of one CorruptEncoder benchmark row, sharing the preset's target, budget and trigger."""
    common = {k: v for k, v in ce.items() if k in _CE_COMMON}
    if row == "clean":  # CorruptEncoder with zero poisons: clean data, same trigger evaluated
        attack: dict[str, Any] = {"name": "corruptencoder", "params": {**ce, "poison_rate": None, "poison_count": 0}}
    elif row == "ssl_backdoor":
        out = ce.get("target_in_pretraining") is False
        attack = {"name": "ssl-backdoor", "params": {**common, **(_SSLB_OUT_OF_PRETRAINING if out else {})}}
    elif row == "poisoned_encoder":
        attack = {"name": "poisoned-encoder", "params": {**common, "num_references": ce.get("num_references", 3)}}
    elif row == "corruptencoder_plus":
        attack = {"name": "corruptencoder-plus", "params": {**ce, "support_ratio": 0.2}}
    else:
        attack = {"name": "corruptencoder", "params": ce}
    data: dict[str, Any] = {"preset": CORRUPTENCODER_PRESET, "attack": attack}
    if row == "corruptencoder_localized_cropping":
        data["defense"] = {"name": "localized-cropping", "params": {"delta": 0.2}}
    return data


def script_main(main: Callable[[], None]) -> None:
    """Run a benchmark script's ``main``: a ConfigError / DataError ends in one line on stderr and exit status 2."""
    import sys

    try:
        main()
    except ClpoisonError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def add_run_args(ap: Any) -> None:
    """``--seed``, ``--threads`` and ``--work`` of a search script (an ``argparse.ArgumentParser``)."""
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--work", default=None, help="run folders (default: OUT without suffix + '_runs')")


def start(args: Any) -> tuple[Path, Path]:
    """Apply ``--threads``; ``(out, work folder)`` of the parsed arguments."""
    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    return out, work_dir(out, args.work)


# --------------------------------------------------------------------------------------------------------------
# No-Label Backdoors (benchmarks/nlb_small.py, nlb_search.py)

NLB_PRESET = "nlb-small"
NLB_ROWS = ("random", "kmeans", "con", "conp", "conn", "target")


#: What every NLB row reports from its run (final epoch), and what its trace holds (every ``eval.every_epochs``).
NLB_METRICS = ("asr", "ca", "asr_knn", "delta_cos", "asr_no_trigger", "asr_mismatched", "asr_knn_mismatched",
               "delta_cos_mismatched", "knn_top1", "backdoor_zscore")
NLB_TRACE = ("asr", "asr_knn", "delta_cos", "asr_mismatched", "delta_cos_mismatched", "ca")


def nlb_attacker_run(params: dict, seed: int, work: Path, overrides: Sequence[str] = ()) -> Path:
    """The attacker's clean encoder as a run of the preset's ``attacker`` spec (``attacker_epochs``, seed
    1000 + ``seed``: independent of the victims), trained once per seed and passed to every row as
    ``attack.params.encoder`` — the training the attack would otherwise repeat in each run. The ``data.*`` entries
    of ``overrides`` (the victims') apply too: the attacker pretrains on the images it poisons."""
    a = params.get("attacker") or {}
    train = {**(a.get("train") or {}), "epochs": params["attacker_epochs"], "batch_size": params["attacker_batch_size"]}
    data = {"preset": "simclr-small", "method": a["method"], "model": a["model"], "augment": a["augment"],
            "train": train}
    run_named(f"attacker_s{seed}", data, [f"seed={1000 + seed}", *(o for o in overrides if o.startswith("data."))],
              work)
    return Path(work) / f"attacker_s{seed}"


def nlb_clean_run(seed: int, overrides: list[str], work: Path, name: str = "") -> Path:
    """The clean victim: ``nlb-small`` without the attack (the same encoder, method and schedule as the rows)."""
    name = name or f"clean_s{seed}"
    run_named(name, {"preset": NLB_PRESET, "attack": {"name": "none"}}, [f"seed={seed}", *overrides], work)
    return Path(work) / name


def nlb_row(row: str, params: dict, seed: int, encoder: Path, overrides: list[str], work: Path, tag: str = "") -> dict:
    """Metrics and manifest summary of one NLB row (``selection = row``) on seed ``seed`` (run ``{tag}{row}_s{seed}``):
    the anchor and TPR (= the purity of the poison set: the share with the anchor label), :data:`NLB_METRICS`, the
    selection time and the trace of :data:`NLB_TRACE` against epochs."""
    from ..report.tables import history_curve

    p = {**params, "selection": row, "encoder": str(encoder)}
    name = f"{tag}{row}_s{seed}"
    res, _ = run_named(name, {"preset": NLB_PRESET, "attack": {"name": "nlb", "params": p}},
                       [f"seed={seed}", *overrides], work)
    man = json.loads((Path(work) / name / "manifest.json").read_text())
    m = res["metrics"]
    return {"tpr": man["targets"]["tpr"], "anchor": man["targets"]["anchor_index"],
            **{k: m.get(k) for k in NLB_METRICS}, "select_seconds": man["details"]["selection_seconds"],
            "trace": history_curve(res, *NLB_TRACE)}


def clean_by_target(run: Path, trigger: Any, eval_seed: int) -> dict[str, Any]:
    """The clean run's baseline for every possible target class with ``trigger`` — for an attack whose target (NLB's
    anchor) is decided by its selection: ``{"asr": [...], "asr_knn": [...], "delta_cos": [...]}`` indexed by class
    (linear probe; kNN over the clean training bank; Δcos to that bank's class centroid) and ``ca`` (the probe's
    clean accuracy)."""
    import torch

    from ..engine.checkpoint import read_checkpoint
    from ..eval.attack_metrics import asr_by_target, knn_backdoor_by_target
    from ..run_folder import checkpoint_file
    from .config import build_config
    from .tasks import task_for

    ckpt = read_checkpoint(checkpoint_file(run))
    task = task_for(build_config(dict(ckpt["config"]), []), torch.device("cpu"))
    method = task.method_from_checkpoint(ckpt)
    splits = task.load()
    m, extras = task.evaluate(method, splits)
    ctx = task.context(method, splits, splits, extras)
    t = splits.test
    sizes = getattr(t, "sizes", None)
    out: dict[str, Any] = {"asr": asr_by_target(ctx.classify, t.images, t.labels, trigger, t.num_classes,
                                                eval_seed, sizes), "ca": m["linear_top1"]}
    if ctx.knn is not None and ctx.embed is not None:
        out.update(knn_backdoor_by_target(ctx.knn, ctx.embed, t.images, t.labels, trigger, eval_seed, sizes))
    return out
