"""The harness of the benchmark scripts under ``benchmarks/`` (not library code: nothing in ``clpoison`` imports
it; scripts import it as ``_harness``, since ``python benchmarks/x.py`` puts ``benchmarks/`` on ``sys.path``).

A *comparison* is a grid file (``benchmarks/grids/NAME.yaml``: the runs, which ``clpoison grid`` runs as well) and
the script's ``summarise`` (the finished runs -> the JSON that the docs quote). A script reads the grid file,
applies its arguments (seeds, rows, overrides), runs the cells with :func:`run_comparison` (``WORK/cells/NAME``,
reused when finished: the same run folders as ``clpoison grid GRID --out WORK``) and writes ``summarise(...)`` with
:func:`write_result`. ``--summarise-only`` trains nothing: it summarises the finished cells of WORK (a folder that
``clpoison grid`` filled, say), and names the first missing one.

The rest is what the older, not grid-backed scripts share: :func:`run_named` (one named run, reused when finished),
:func:`reuse_or_export`, per-seed :func:`stats`, ``attack.params.*`` overrides (:func:`split_overrides`,
:func:`route_params`), the ``--work`` folder and :func:`script_main` (a ConfigError / DataError ends the script in
one line on stderr and exit status 2).

Example::

    >>> stats([0.5, 0.7])["mean"]
    0.6
    >>> split_overrides(["attack.params.trigger.size=8", "train.epochs=2"], {"trigger": {"size": 4}})
    ({'trigger': {'size': 8}}, ['train.epochs=2'])
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import yaml

from clpoison.attacks import ATTACKS
from clpoison.errors import ClpoisonError, ConfigError
from clpoison.experiments.config import build_config, parse_override, resolve_presets
from clpoison.experiments.grid import CELLS_DIR, expand_grid, run_grid
from clpoison.experiments.poison import export_attack
from clpoison.experiments.runner import RESULTS_NAME, run_or_reuse
from clpoison.report.collect import GRID_NAME
from clpoison.utils.io import atomic_write_json, dumps_json

GRIDS = Path(__file__).resolve().parent / "grids"
ECHO = partial(print, flush=True)  # a fresh run's line shows at once in a log file

# --------------------------------------------------------------------------------------------------------------
# a comparison: grid file -> runs -> summarise -> JSON


def comparison_parser(doc: str, seeds: Optional[int], out_help: str = "JSON result file",
                      work_help: str = "grid folder of the runs, WORK/cells/NAME") -> argparse.ArgumentParser:
    """The arguments every comparison script takes: ``--out``, ``--seeds`` (default ``seeds``; none when ``None``:
    a one-seed script adds its ``--seed``), ``--work``, ``--threads``, ``--summarise-only`` and the ``key=value``
    overrides for every run; the script adds its own (``work_help``: the layout of ``--work`` for a script that is
    not grid-backed)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--out", required=True, help=out_help)
    if seeds is not None:
        ap.add_argument("--seeds", type=int, default=seeds)
    ap.add_argument("--work", default=None, help=f"{work_help} (default: OUT without suffix + '_runs')")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--summarise-only", action="store_true", help="train nothing: summarise the finished runs in "
                    "WORK (e.g. of `clpoison grid` on the same grid file); a missing one is one error line")
    ap.add_argument("overrides", nargs="*", help="config overrides for every run, e.g. train.epochs=10")
    return ap


def run_comparison(spec: dict, work: Path, overrides: Sequence[str] = (), summarise_only: bool = False,
                   echo: Callable[[str], None] = ECHO) -> dict[str, dict]:
    """``{cell name: its results.json}`` of every cell of the grid ``spec`` (+ ``overrides``) in ``WORK/cells/NAME``,
    run or reused by :func:`clpoison.experiments.grid.run_grid`; with ``summarise_only`` nothing runs and a cell
    that is missing, or finished with another config, is one ConfigError line."""
    cells = expand_grid(spec, list(overrides))
    legacy = [c.name for c in cells if (Path(work) / c.name / RESULTS_NAME).is_file()]
    if legacy and not (Path(work) / GRID_NAME).exists():
        raise ConfigError(f"'{work}' holds runs of the scripts' earlier layout (WORK/NAME, e.g. {legacy[0]}); a "
                          f"comparison keeps them in WORK/cells/NAME: move them (mkdir -p NEW/cells && mv "
                          f"{work}/{legacy[0]} ... NEW/cells/) and give --work NEW, or another --work")
    if not summarise_only:
        state = run_grid(spec, work, list(overrides), echo=echo)
        failed = [c for c in state["cells"] if c["status"] not in ("done", "reused")]
        if failed:
            raise ClpoisonError(f"{len(failed)} runs did not finish ({failed[0]['name']}: {failed[0]['error']}); "
                                "fix it and re-run the same command (finished runs are reused)")
    out = {}
    for c in cells:
        path = Path(work) / CELLS_DIR / c.name / RESULTS_NAME
        try:
            res = json.loads(path.read_text())
        except (OSError, ValueError):
            res = None
        if res is None or res.get("config") != json.loads(dumps_json(c.config.to_dict())):
            raise ConfigError(f"'{path.parent}' holds no finished run of cell {c.name}'s config; run without "
                              "--summarise-only (or `clpoison grid` with the same grid file and overrides)")
        out[c.name] = res
    return out


def write_result(out: Path, result: dict, shown: Optional[dict] = None) -> None:
    """Write the comparison's JSON atomically and print ``shown`` (default: all of it)."""
    atomic_write_json(out, result)
    print(json.dumps(result if shown is None else shown, indent=2))


def seed_axis(spec: dict, seeds: int) -> dict:
    """``spec`` with the seeds ``0 .. seeds-1`` (a copy)."""
    spec = copy.deepcopy(spec)
    spec["axes"] = {**spec["axes"], "seed": list(range(seeds))}
    return spec


def override_keys(items: Sequence[str]) -> dict:
    """``key=value`` overrides as grid-cell keys ``{dotted key: parsed value}`` (a cell applies each as the same
    override)."""
    return {".".join(path): value for path, value in map(parse_override, items)}


def route_params(spec: dict, overrides: list[str], prefix: str = "attack.params.") -> tuple[dict, list[str]]:
    """``(spec, the other overrides)``: each ``attack.params.KEY=VALUE`` of ``overrides`` becomes a key of every
    cell of ``spec`` whose attack has the parameter KEY and that does not set ``attack.params.KEY`` itself (so a
    clean row's zero poisons stay zero); an override that no cell's attack takes is one ConfigError line."""
    routed = [o for o in overrides if o.startswith(prefix)]
    rest = [o for o in overrides if not o.startswith(prefix)]
    spec = copy.deepcopy(spec)
    base = resolve_presets(copy.deepcopy(spec["base"]))
    for o in routed:
        path, value = parse_override(o)
        key, taken = ".".join(path), False
        for cell in spec["cells"]:
            if path[2] in _attack_fields(_attack_name(base, cell)):
                taken = True
                if key not in cell and key not in (cell.get("axes") or {}):
                    cell[key] = value
        if not taken:
            raise ConfigError(f"override '{o}': no row's attack has the parameter '{path[2]}'")
    return spec, rest


def _attack_name(base: dict, cell: dict) -> str:
    if "attack.name" in cell:
        return cell["attack.name"]
    if isinstance(cell.get("attack"), dict) and "name" in cell["attack"]:
        return cell["attack"]["name"]
    if "preset" in cell:
        base = resolve_presets({"preset": cell["preset"]})
    return (base.get("attack") or {}).get("name", "none")


def _attack_fields(name: str) -> set[str]:
    return {f.name for f in dataclasses.fields(ATTACKS.get(name).Params)}


# --------------------------------------------------------------------------------------------------------------
# runs by name (the scripts that are not grid-backed), exports, statistics, arguments


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


def script_main(main: Callable[[], None]) -> None:
    """Run a benchmark script's ``main``: a ConfigError / DataError ends in one line on stderr and exit status 2."""
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
