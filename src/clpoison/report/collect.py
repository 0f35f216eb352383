"""Results as data: find runs (a grid folder, run folders, or a folder of run folders), flatten each run's
``results.json`` into one row, and write the tidy table (``results.csv``, and ``results.parquet`` when pyarrow is
installed).

A row holds the cell (folder name), its status (``done`` / ``reused`` / ``failed`` / ``pending``), the error of a
failed cell, its path, the grid's varied keys (dotted config keys as columns, e.g. ``attack.params.poison_rate``),
the key config (``method.name``, ``attack.name``, ``defense.name``, ``seed``, ...), and every scalar of
``metrics.*``, ``timings.*`` and ``throughput.*`` (short lists such as a confidence interval as JSON text).

Example::

    >>> flatten_results({"metrics": {"asr": 0.5, "ci": [0.1, 0.9]}, "timings": {"total_s": 3.0},
    ...                  "config": {"seed": 1, "attack": {"name": "x", "params": {}}}})["metrics.ci"]
    '[0.1, 0.9]'
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from ..errors import ConfigError
from ..run_folder import RESULTS
from ..utils.io import atomic_write_bytes, atomic_write_text

GRID_NAME = "grid.json"
RESULTS_NAME = RESULTS
TABLE_NAME = "results.csv"
PARQUET_NAME = "results.parquet"
KEY_CONFIG = ("method.name", "attack.name", "defense.name", "seed", "data.name", "train.epochs",
              "attack.params.poison_rate", "attack.params.poison_count", "attack.params.target")


@dataclass
class Run:
    """One run (a grid cell or a run folder): its name, status, path and ``results.json`` (None if not finished)."""

    name: str
    path: Path
    status: str
    results: Optional[dict] = None
    error: Optional[str] = None
    varied: dict = field(default_factory=dict)
    seconds: Optional[float] = None


def _read(path: Path) -> Optional[dict]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def flat(d: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as ``{dotted.key: value}``."""
    if not isinstance(d, dict):
        return {prefix[:-1]: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _cell_value(v: Any) -> Any:
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, (list, tuple, dict)):
        return json.dumps(v)
    return v


def flatten_results(res: dict) -> dict[str, Any]:
    """Key config + scalar metrics, timings and throughput of one ``results.json`` as a flat row."""
    cfg = flat(res.get("config") or {})
    row = {k: _cell_value(cfg[k]) for k in KEY_CONFIG if k in cfg}
    for section in ("metrics", "timings", "throughput"):
        for k, v in flat(res.get(section) or {}).items():
            if isinstance(v, (list, tuple)) and len(v) > 4:
                continue  # per-image / per-victim lists stay in results.json
            row[f"{section}.{k}"] = _cell_value(v)
    return row


def grid_runs(folder: Path) -> list[Run]:
    """The cells of a grid folder in grid order, with their status; results only for finished cells."""
    state = _read(folder / GRID_NAME)
    if state is None or not isinstance(state.get("cells"), list):
        raise ConfigError(f"'{folder / GRID_NAME}' is missing or unreadable; is '{folder}' a `clpoison grid` folder?")
    runs = []
    for c in state["cells"]:
        path = folder / c["path"]
        res = _read(path / RESULTS_NAME) if c.get("status") in ("done", "reused") else None
        runs.append(Run(c["name"], path, c.get("status", "pending"), res, c.get("error"), c.get("varied") or {},
                        c.get("seconds")))
    return runs


def find_runs(paths: Sequence[str | Path]) -> list[Run]:
    """Runs named by ``paths``: a grid folder (its cells), a run folder (``results.json``), or a folder whose
    sub-folders are runs. One ConfigError line for a path that is none of these."""
    runs: list[Run] = []
    for p in map(Path, paths):
        if (p / GRID_NAME).exists():
            runs += grid_runs(p)
        elif (p / RESULTS_NAME).exists():
            runs.append(Run(p.name, p, "done", _read(p / RESULTS_NAME)))
        elif p.is_dir() and any((q / RESULTS_NAME).exists() for q in p.iterdir() if q.is_dir()):
            runs += [Run(q.name, q, "done", _read(q / RESULTS_NAME))
                     for q in sorted(p.iterdir()) if (q / RESULTS_NAME).exists()]
        else:
            raise ConfigError(f"'{p}' is not a grid folder ({GRID_NAME}), a run folder ({RESULTS_NAME}) or a folder of "
                              "run folders; pass the --out of `clpoison grid` or `clpoison run`")
    return runs


def table_rows(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """One tidy row per run."""
    rows = []
    for r in runs:
        row: dict[str, Any] = {"cell": r.name, "status": r.status, "error": r.error or "", "path": str(r.path),
                               "seconds": r.seconds}
        row.update({k: _cell_value(v) for k, v in flat(r.varied).items()})
        if r.results is not None:
            row.update(flatten_results(r.results))
        rows.append(row)
    return rows


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    cols: list[str] = []
    for row in rows:
        cols += [k for k in row if k not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, cols, lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in cols})
    return buf.getvalue()


def to_parquet(rows: Sequence[dict[str, Any]]) -> Optional[bytes]:
    """The rows as Parquet bytes, or None when pyarrow is not installed. A column of mixed types is written as text."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return None
    cols: list[str] = []
    for row in rows:
        cols += [k for k in row if k not in cols]
    data = {}
    for c in cols:
        vals = [row.get(c) for row in rows]
        kinds = {type(v) for v in vals if v is not None}
        if kinds == {int, float}:
            vals = [None if v is None else float(v) for v in vals]
        elif len(kinds) > 1:
            vals = [None if v is None else str(v) for v in vals]
        data[c] = vals
    buf = pa.BufferOutputStream()
    pq.write_table(pa.table(data), buf)
    return buf.getvalue().to_pybytes()


def write_results_table(folder: Path, runs: Optional[Sequence[Run]] = None) -> Path:
    """``folder/results.csv`` (and ``results.parquet`` with pyarrow) of a grid folder's cells (or of ``runs``)."""
    folder = Path(folder)
    rows = table_rows(grid_runs(folder) if runs is None else runs)
    atomic_write_text(folder / TABLE_NAME, to_csv(rows))
    pq = to_parquet(rows)
    if pq is not None:
        atomic_write_bytes(folder / PARQUET_NAME, pq)
    return folder / TABLE_NAME
