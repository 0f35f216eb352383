"""Benchmark rows that several scripts under ``benchmarks/`` share (not library code: nothing in ``clpoison``
imports it): the Carlini clean-data control, the CorruptEncoder rows (the cells of
``grids/corruptencoder_small.yaml``) and the No-Label-Backdoor rows. Scripts import it as ``_rows`` (``python
benchmarks/x.py`` puts ``benchmarks/`` on ``sys.path``; tests/conftest.py does the same for the tests).

Example::

    >>> corruptencoder_rows("clean,corruptencoder")
    ['clean', 'corruptencoder']
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from clpoison.errors import ConfigError
from clpoison.experiments.config import ExperimentConfig
from clpoison.experiments.grid import expand_grid, read_grid

from _harness import GRIDS, route_params, run_named

# --------------------------------------------------------------------------------------------------------------
# Carlini & Terzis (carlini_small, safeclip_small, clip_dose, clip_defenses_small, decree_small)


def carlini_clean_control() -> dict:
    """Config of the clean-data control run (``clean_s{seed}``): plain clip-small on unpoisoned pairs, evaluated
    with the small presets' backdoor trigger and targeted victims (``attack.name: carlini-control``) — the
    ``clean_s{seed}`` cell of ``grids/carlini_small.yaml`` (the other CLIP grid files restate it:
    tests/test_bench_harness.py), so decree_small, which is not grid-backed, trains the same control."""
    cell = next(c for c in read_grid(GRIDS / "carlini_small.yaml")["cells"] if c["name"] == "clean_s{seed}")
    return {k: v for k, v in cell.items() if k != "name"}


# --------------------------------------------------------------------------------------------------------------
# CorruptEncoder (corruptencoder_small, corruptencoder_search, decree_small): the rows are the cells of one grid file

CORRUPTENCODER_GRID = GRIDS / "corruptencoder_small.yaml"
CORRUPTENCODER_PRESET = "corruptencoder-small"


def corruptencoder_grid() -> dict:
    """``grids/corruptencoder_small.yaml`` (the one source of the CorruptEncoder rows), each cell keyed by its row:
    the cell name without ``_s{seed}``."""
    return read_grid(CORRUPTENCODER_GRID)


def row_name(template: str) -> str:
    """The row of a per-seed cell name template: ``corruptencoder_s{seed}`` -> ``corruptencoder``."""
    return template.removesuffix("_s{seed}")


def corruptencoder_row_names() -> list[str]:
    """The rows in the grid file's order."""
    return [row_name(c["name"]) for c in corruptencoder_grid()["cells"]]


def corruptencoder_rows(rows: str) -> list[str]:
    """The rows named in a comma-separated list; an unknown one is a ConfigError naming the choices."""
    known = corruptencoder_row_names()
    out = [r for r in rows.split(",") if r]
    bad = sorted(set(out) - set(known))
    if bad:
        raise ConfigError(f"unknown rows {bad}; choose from {', '.join(known)}")
    return out


def corruptencoder_spec(rows: Sequence[str], seeds: Sequence[int], overrides: Sequence[str]) -> tuple[dict, list[str]]:
    """``(grid spec, the other overrides)``: the grid file's cells of ``rows`` over ``seeds``, each ``attack.params.*``
    override routed to the rows whose attack takes that parameter (:func:`_harness.route_params`)."""
    spec, rest = route_params(corruptencoder_grid(), list(overrides))  # checked against every row
    spec["cells"] = [c for c in spec["cells"] if row_name(c["name"]) in rows]
    spec["axes"] = {**spec["axes"], "seed": list(seeds)}
    return spec, rest


def corruptencoder_config(row: str, name: str, overrides: Sequence[str]) -> ExperimentConfig:
    """The validated config (run name ``name``) of one CorruptEncoder row: the grid file's cell, the
    ``attack.params.*`` overrides its attack takes, then the other overrides (``seed=...`` among them)."""
    spec, rest = corruptencoder_spec([row], [], overrides)
    spec["axes"] = {}
    spec["cells"] = [{**spec["cells"][0], "name": name}]
    return expand_grid(spec, rest)[0].config


# --------------------------------------------------------------------------------------------------------------
# No-Label Backdoors (nlb_small.py, nlb_search.py)

NLB_PRESET = "nlb-small"
NLB_ROWS = ("random", "kmeans", "con", "conp", "conn", "target")

#: What every NLB row reports from its run (final epoch), and what its trace holds (every ``eval.every_epochs``).
NLB_METRICS = ("asr", "ca", "asr_knn", "delta_cos", "asr_no_trigger", "asr_mismatched", "asr_knn_mismatched",
               "delta_cos_mismatched", "knn_top1", "backdoor_zscore")
NLB_TRACE = ("asr", "asr_knn", "delta_cos", "asr_mismatched", "delta_cos_mismatched", "ca")


def nlb_attacker_run(params: dict, seed: int, work: Path, overrides: Sequence[str] = (), reuse_only: bool = False) -> Path:
    """The attacker's clean encoder as a run of the preset's ``attacker`` spec (``attacker_epochs``, seed
    1000 + ``seed``: independent of the victims), trained once per seed and passed to every row as
    ``attack.params.encoder`` — the training the attack would otherwise repeat in each run. The ``data.*`` entries
    of ``overrides`` (the victims') apply too: the attacker pretrains on the images it poisons. ``reuse_only``: never
    train (:func:`_harness.run_named`)."""
    a = params.get("attacker") or {}
    train = {**(a.get("train") or {}), "epochs": params["attacker_epochs"], "batch_size": params["attacker_batch_size"]}
    data = {"preset": "simclr-small", "method": a["method"], "model": a["model"], "augment": a["augment"],
            "train": train}
    run_named(f"attacker_s{seed}", data, [f"seed={1000 + seed}", *(o for o in overrides if o.startswith("data."))],
              work, reuse_only=reuse_only)
    return Path(work) / f"attacker_s{seed}"


def nlb_clean_run(seed: int, overrides: list[str], work: Path, name: str = "", reuse_only: bool = False) -> Path:
    """The clean victim: ``nlb-small`` without the attack (the same encoder, method and schedule as the rows)."""
    name = name or f"clean_s{seed}"
    run_named(name, {"preset": NLB_PRESET, "attack": {"name": "none"}}, [f"seed={seed}", *overrides], work,
              reuse_only=reuse_only)
    return Path(work) / name


def nlb_row(row: str, params: dict, seed: int, encoder: Path, overrides: list[str], work: Path, tag: str = "",
            reuse_only: bool = False) -> dict:
    """Metrics and manifest summary of one NLB row (``selection = row``) on seed ``seed`` (run ``{tag}{row}_s{seed}``):
    the anchor and TPR (= the purity of the poison set: the share with the anchor label), :data:`NLB_METRICS`, the
    selection time and the trace of :data:`NLB_TRACE` against epochs."""
    from clpoison.report.tables import history_curve

    p = {**params, "selection": row, "encoder": str(encoder)}
    name = f"{tag}{row}_s{seed}"
    res, _ = run_named(name, {"preset": NLB_PRESET, "attack": {"name": "nlb", "params": p}},
                       [f"seed={seed}", *overrides], work, reuse_only=reuse_only)
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

    from clpoison.engine.checkpoint import read_checkpoint
    from clpoison.eval.attack_metrics import asr_by_target, knn_backdoor_by_target
    from clpoison.experiments.config import build_config
    from clpoison.experiments.tasks import task_for
    from clpoison.run_folder import checkpoint_file

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
