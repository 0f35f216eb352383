"""The attack × defense grid: ``clpoison grid GRID.yaml [key=value ...] --out DIR``.

A grid file is a base config plus the settings to vary::

    name: my-grid
    base: simclr-small                 # a preset name, or a config mapping (preset: ..., train: {...}, ...)
    axes:                              # any config key -> list of values; the cells are the cross product
      attack.name: [none, ssl-backdoor]
      defense.name: [none, localized-cropping]
      seed: [0, 1, 2]
    cells:                             # optional explicit cells, each crossed with its own axes and the grid's;
      - {name: "clean_s{seed}", attack: {name: none}}     # `name` may be a template of the cell's values
      - name: "bd_{attack.params.poison_rate}_s{seed}"
        preset: carlini-backdoor-small
        axes: {attack.params.poison_rate: [0.005, 0.01]}

Each cell is a normal run directory, ``DIR/cells/NAME``, made by :func:`~clpoison.experiments.runner.run_or_reuse`
(the runner's lock, ``OUT.partial`` + rename, resume and fingerprint apply unchanged). Every cell's config is built
and validated before the first one runs. Cells run one after another (``jobs > 1``: in that many worker processes).
Re-running the same command resumes the grid: a finished cell whose config is identical is reused, a changed one
is run again, a partial one resumes from its checkpoint. A failed cell is recorded with its error (``grid.json``,
``results.csv``) and the grid goes on. After every cell the table of results is rewritten: ``DIR/results.csv``
(and ``DIR/results.parquet`` when pyarrow is installed), one row per cell (:mod:`clpoison.report.collect`).

How a key is applied: ``preset``, top-level keys and a component's ``name`` (``attack.name``, ``defense.name``,
``method.name``) go into the config mapping (a different component name drops the preset's parameters for the old
one, as a config file does); any other dotted key is applied afterwards as a ``key=value`` override (so
``attack.params.trigger.size`` changes that one value); the command line's ``key=value`` items come last, for
every cell.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

from ..errors import ClpoisonError, ConfigError
from ..report.collect import GRID_NAME, write_results_table
from ..utils.io import atomic_write_json, check_output_path, dumps_json, remove_stale_temps
from ..utils.lock import OutputLock
from .config import ExperimentConfig, build_config, check_label, list_presets, read_yaml
from .runner import RESULTS_NAME, run_or_reuse

__all__ = ["Cell", "read_grid", "normalize_grid", "expand_grid", "run_grid", "GRID_KEYS"]

GRID_KEYS = ("name", "description", "base", "axes", "cells")
COMPONENTS = ("method", "attack", "defense")
CELLS_DIR = "cells"


@dataclass
class Cell:
    """One setting of a grid: its run-folder name, the values that make it a cell, and its validated config."""

    name: str
    varied: dict[str, Any]
    config: ExperimentConfig
    status: str = "pending"
    error: Optional[str] = None
    seconds: Optional[float] = None
    extra: dict = field(default_factory=dict)


def read_grid(path: Union[str, Path]) -> dict:
    """The grid file as a mapping ``{name, description, base, axes, cells}``; one ConfigError line for a bad one."""
    return normalize_grid(read_yaml(path), path)


def normalize_grid(spec: dict, path: Union[str, Path] = "<grid>") -> dict:
    """A grid mapping (as read from YAML) checked and completed: ``{name, description, base, axes, cells}``.
    Top-level keys starting with ``x-`` are ignored (a place for YAML anchors shared by several cells)."""
    spec = {k: v for k, v in spec.items() if not str(k).startswith("x-")}
    unknown = sorted(set(spec) - set(GRID_KEYS) - {"preset"})
    if unknown and "base" in spec:
        raise ConfigError(f"grid file '{path}': unknown top-level keys {unknown}; a grid holds {', '.join(GRID_KEYS)}")
    if "base" not in spec:  # the file's own config keys (preset: ..., train: ...) are the base
        spec = {"base": {k: v for k, v in spec.items() if k not in GRID_KEYS},
                **{k: v for k, v in spec.items() if k in GRID_KEYS}}
    base = spec["base"]
    if isinstance(base, str):
        if base.endswith((".yaml", ".yml")):
            base = read_yaml(Path(path).parent / base if not Path(base).is_absolute() else base)
        elif base in list_presets():
            base = {"preset": base}
        else:
            raise ConfigError(f"grid file '{path}': base '{base}' is neither a preset nor a .yaml file; choose one of: "
                              f"{', '.join(list_presets())}")
    if base is None:
        base = {}
    if not isinstance(base, dict):
        raise ConfigError(f"grid file '{path}': base must be a preset name or a config mapping")
    axes = spec.get("axes") or {}
    for k in [*(axes if isinstance(axes, dict) else []),
              *(k for c in spec.get("cells") or [] if isinstance(c, dict) for k in [*c, *(c.get("axes") or {})])]:
        if not isinstance(k, str):
            raise ConfigError(f"grid file '{path}': key {k!r} is not a config key; write it as a dotted name "
                              "such as train.lr (quote it in YAML)")
    if not isinstance(axes, dict) or any(not isinstance(v, list) or not v for v in axes.values()):
        raise ConfigError(f"grid file '{path}': axes must map config keys to non-empty lists, e.g. "
                          "'axes: {seed: [0, 1, 2]}'")
    cells = spec.get("cells")
    if cells is not None and (not isinstance(cells, list) or not cells or not all(isinstance(c, dict) for c in cells)):
        raise ConfigError(f"grid file '{path}': cells must be a non-empty list of mappings (config keys, optional name)")
    for c in cells or []:
        if not isinstance(c.get("axes", {}), dict) or any(not isinstance(v, list) or not v
                                                          for v in (c.get("axes") or {}).values()):
            raise ConfigError(f"grid file '{path}': a cell's axes must map config keys to non-empty lists")
    if not axes and not cells:
        raise ConfigError(f"grid file '{path}' has neither axes nor cells; add e.g. 'axes: {{seed: [0, 1]}}'")
    return {"name": check_label(spec.get("name") or Path(path).stem, f"grid file '{path}': name"), "description": spec.get("description") or "",
            "base": base, "axes": axes, "cells": cells or [{}]}


def _fmt(v: Any) -> str:
    return json.dumps(v) if isinstance(v, (dict, list)) else str(v)


def _label(key: str, keys: list[str]) -> str:
    """Short column-free label of a dotted key for a folder name: ``attack.name`` -> ``attack``,
    ``attack.params.poison_rate`` -> ``poison_rate`` (the full key when the short one is ambiguous)."""
    parts = key.split(".")
    short = parts[-2] if parts[-1] == "name" and len(parts) > 1 else parts[-1]
    others = [k for k in keys if k != key]
    if any(_label_simple(k) == short for k in others):
        return key
    return short


def _label_simple(key: str) -> str:
    parts = key.split(".")
    return parts[-2] if parts[-1] == "name" and len(parts) > 1 else parts[-1]


def _cell_name(template: Optional[str], varied: dict[str, Any], index: int) -> str:
    if template is not None:
        def sub(m: re.Match) -> str:
            key = m.group(1)
            if key not in varied:
                raise ConfigError(f"cell name '{template}': '{{{key}}}' is not one of the cell's keys "
                                  f"({', '.join(varied) or 'none'})")
            return _fmt(varied[key])

        name = re.sub(r"\{([^{}]+)\}", sub, str(template))
    else:
        keys = [k for k, v in varied.items() if not isinstance(v, (dict, list))]
        name = "_".join(f"{_label(k, keys)}-{_fmt(varied[k])}" for k in keys) or f"cell{index}"
    name = re.sub(r"[^A-Za-z0-9._+-]", "_", name).strip(".") or f"cell{index}"
    return name


def _put(data: dict, overrides: list[str], key: str, value: Any) -> None:
    """Apply one grid key: into the config mapping (``preset``, top-level keys, a component's ``name``) or as a
    ``key=value`` override (any other dotted key)."""
    parts = key.split(".")
    if len(parts) == 1:
        if key in COMPONENTS and isinstance(value, dict) and isinstance(data.get(key), dict) \
                and value.get("name", data[key].get("name")) != data[key].get("name"):
            data[key] = copy.deepcopy(value)  # another component: the old one's parameters do not apply
        elif isinstance(value, dict) and isinstance(data.get(key), dict):
            from .config import deep_merge

            data[key] = deep_merge(data[key], value)
        else:
            data[key] = copy.deepcopy(value)
    elif len(parts) == 2 and parts[0] in COMPONENTS and parts[1] == "name":
        comp = data.get(parts[0])
        if not isinstance(comp, dict) or comp.get("name", value) != value:
            data[parts[0]] = {"name": value}
        else:
            comp["name"] = value
    else:
        overrides.append(f"{key}={dumps_json(value).strip()}")


def expand_grid(spec: dict, overrides: Optional[list[str]] = None) -> list[Cell]:
    """The cells of a grid (explicit cells × the cross product of the axes), each with its validated config;
    a bad cell is one ConfigError line naming it, before anything runs."""
    cells: list[Cell] = []
    seen: dict[str, dict] = {}
    for i, entry in enumerate(spec["cells"]):
        entry = dict(entry)
        template = entry.pop("name", None)
        axes = {**(entry.pop("axes", None) or {}), **spec["axes"]}  # the cell's own axes, then the grid's
        combos = list(itertools.product(*axes.values())) if axes else [()]
        for combo in combos:
            varied = {**entry, **dict(zip(axes, combo))}
            data, ov = copy.deepcopy(spec["base"]), []
            for key, value in varied.items():
                _put(data, ov, key, value)
            name = check_label(_cell_name(template, varied, len(cells)), f"grid cell name (template {template!r})")
            if name in seen:
                raise ConfigError(f"two cells of the grid are both named '{name}' ({seen[name]} and {varied}); give the "
                                  "cells distinct names (a `name:` template such as 'bd_{seed}')")
            seen[name] = varied
            data["name"] = name
            try:
                cfg = build_config(data, [*ov, "train.progress=false", *(overrides or [])])
            except ConfigError as e:
                raise ConfigError(f"grid cell '{name}': {e}") from None
            cells.append(Cell(name, {k: v for k, v in varied.items() if k != "preset" or len(spec["cells"]) > 1}, cfg))
    return cells


def _state(spec: dict, cells: list[Cell], source: str, overrides: list[str]) -> dict:
    return {"grid": spec["name"], "description": spec["description"], "source": source, "overrides": overrides,
            "axes": list(spec["axes"]), "cells": [
                {"name": c.name, "path": f"{CELLS_DIR}/{c.name}", "varied": c.varied, "status": c.status,
                 "error": c.error, "seconds": c.seconds} for c in cells]}


def _finished(cell: Cell, out: Path) -> bool:
    """True when the cell's run folder holds a results.json of exactly this config (it would be reused)."""
    path = out / CELLS_DIR / cell.name / RESULTS_NAME
    try:
        return json.loads(path.read_text()).get("config") == json.loads(dumps_json(cell.config.to_dict()))
    except (OSError, ValueError):
        return False


def _run_cell(cfg_dict: dict, out: str, threads: Optional[int] = None) -> tuple[str, Optional[str], float]:
    """Run (or reuse) one cell; ``(status, error, seconds)``. Errors are caught: a failed cell does not stop the
    grid. Also the entry point of a worker process (``jobs > 1``)."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    t0 = time.time()
    try:
        cfg = build_config(cfg_dict, [])
        _, reused = run_or_reuse(cfg, Path(out), echo=lambda s: print(s, file=sys.stderr, flush=True))
        return ("reused" if reused else "done"), None, round(time.time() - t0, 1)
    except ClpoisonError as e:
        return "failed", str(getattr(e, "cli_message", None) or e), round(time.time() - t0, 1)
    except Exception as e:  # a crash in one cell (a bug, out of memory) is recorded; the grid goes on
        tb = traceback.format_exc()
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).with_name(Path(out).name + ".error.txt").write_text(tb)
        return "failed", f"{type(e).__name__}: {e}".splitlines()[0], round(time.time() - t0, 1)


def run_grid(grid: Union[str, Path, dict], out: Union[str, Path], overrides: Optional[list[str]] = None,
             jobs: int = 1, max_cells: Optional[int] = None, overwrite: bool = False,
             echo: Callable[[str], None] = lambda s: None) -> dict:
    """Run every cell of ``grid`` (a grid file, or a mapping as :func:`normalize_grid` returns) into
    ``out/cells/NAME`` (resuming / reusing what is there); returns the
    grid state (``out/grid.json``); a folder that holds only ``cells/`` (run folders moved in) counts as a grid
    folder, any other folder without ``grid.json`` is refused. ``max_cells`` stops after that many cells were run
    (not counting reused ones); re-running continues. ``jobs > 1`` runs cells in that many worker processes, each
    with ``torch threads // jobs`` threads."""
    overrides = list(overrides or [])
    spec = grid if isinstance(grid, dict) else read_grid(grid)
    cells = expand_grid(spec, overrides)  # every cell validated before anything is written
    if jobs < 1:
        raise ConfigError(f"--jobs {jobs} must be a positive integer")
    out = check_output_path(out, "dir", inputs=[spec, overrides, *([] if isinstance(grid, dict) else [grid])])
    if out.exists() and any(out.iterdir()) and not (out / GRID_NAME).exists():
        if any(p.name != CELLS_DIR for p in out.iterdir()):
            raise ConfigError(f"'{out}' exists and is not a grid folder (no {GRID_NAME}); choose another --out")
        if overwrite:  # run folders moved in by hand: reused, never deleted
            raise ConfigError(f"'{out}' holds run folders (cells/) that no grid wrote; --overwrite deletes only an "
                              "earlier grid's folder: run without --overwrite to reuse them, or choose another --out")
    with OutputLock(out):
        if overwrite and out.exists():
            shutil.rmtree(out)
        remove_stale_temps(out)  # left by a killed grid; we hold the lock
        out.mkdir(parents=True, exist_ok=True)
        source = spec["name"] if isinstance(grid, dict) else str(grid)
        return _run_locked(spec, cells, out, source, overrides, jobs, max_cells, echo)


def _run_locked(spec: dict, cells: list[Cell], out: Path, source: str, overrides: list[str], jobs: int,
                max_cells: Optional[int], echo: Callable[[str], None]) -> dict:
    def save() -> dict:
        state = _state(spec, cells, source, overrides)
        atomic_write_json(out / GRID_NAME, state)
        write_results_table(out)
        return state

    todo = []
    for c in cells:
        if _finished(c, out):
            c.status = "reused"
        else:
            todo.append(c)
    if max_cells is not None:
        todo, skipped = todo[:max_cells], todo[max_cells:]
    else:
        skipped = []
    echo(f"grid {spec['name']}: {len(cells)} cells, {len(cells) - len(todo) - len(skipped)} already finished, "
         f"{len(todo)} to run{f', {len(skipped)} left for a later run (max cells)' if skipped else ''} -> {out}")
    save()

    def record(c: Cell, result: tuple[str, Optional[str], float]) -> None:
        c.status, c.error, c.seconds = result
        echo(f"cell {c.name}: {c.status} in {c.seconds:.0f}s" + (f" — {c.error}" if c.error else ""))
        save()

    args = [(c.config.to_dict(), str(out / CELLS_DIR / c.name)) for c in todo]
    if jobs == 1:
        for i, (c, a) in enumerate(zip(todo, args)):
            echo(f"cell {c.name} ({i + 1}/{len(todo)})")
            c.status = "running"
            record(c, _run_cell(*a))
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        import torch

        threads = max(1, torch.get_num_threads() // jobs)
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(_run_cell, *a, threads): c for c, a in zip(todo, args)}
            for f in as_completed(futures):
                record(futures[f], f.result())
    state = save()
    failed = [c.name for c in cells if c.status == "failed"]
    echo(f"grid {spec['name']}: {sum(c.status in ('done', 'reused') for c in cells)}/{len(cells)} cells finished"
         + (f", {len(failed)} failed ({', '.join(failed[:5])})" if failed else "")
         + (f", {len(skipped)} not run yet (re-run the same command to continue)" if skipped else "")
         + f"; table {out / 'results.csv'}")
    return state
