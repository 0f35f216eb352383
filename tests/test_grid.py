"""`clpoison grid`: expansion of axes / cells into validated configs, and a 2 × 2 attack × defense grid through the
CLI — interrupted (kill -9) after its first cell and resumed without re-running it, a changed axis value re-running
only the affected cells (in two worker processes), a failed cell recorded while the grid goes on, the results table,
and the report on it."""

import copy
import csv
import json
import os
import subprocess
import sys
from functools import partial
from html.parser import HTMLParser
from pathlib import Path

import pytest

from clpoison.errors import ConfigError
from clpoison.experiments.grid import expand_grid, normalize_grid, run_grid

from cli_inprocess import clpoison_here

BASE = {"preset": "simclr-small", "data": {"train_limit": 128, "test_limit": 64},
        "model": {"arch": "convnet", "width": 8}, "train": {"epochs": 1, "batch_size": 32},
        "eval": {"knn_k": 20, "random_init_control": False, "linear": False},
        "attack": {"name": "ssl-backdoor", "params": {"target": "airplane", "poison_count": 8, "trigger": {"size": 4}}}}


def grid_yaml(path: Path, defenses=("none", "localized-cropping"), attacks=("none", "ssl-backdoor"),
              poison_count=8) -> Path:
    base = copy.deepcopy(BASE)
    base["attack"]["params"]["poison_count"] = poison_count
    path.write_text(json.dumps({"name": "tiny", "base": base, "axes": {"attack.name": list(attacks),
                                                                        "defense.name": list(defenses)}}))
    return path


def clpoison(*args, cwd, fault_at=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    env.pop("CLPOISON_FAULT_AT", None)
    if fault_at is not None:
        env["CLPOISON_FAULT_AT"] = str(fault_at)
    return subprocess.run([sys.executable, "-m", "clpoison", "--threads", "1", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)


def statuses(out: Path) -> dict:
    return {c["name"]: c["status"] for c in json.loads((out / "grid.json").read_text())["cells"]}


def test_axes_cells_and_names():
    spec = normalize_grid({"base": "simclr-small", "axes": {"seed": [0, 1]},
                           "cells": [{"name": "clean_s{seed}", "attack": {"name": "none"}},
                                     {"attack.name": "ssl-backdoor", "attack.params.target": "airplane",
                                      "attack.params.trigger.size": 5, "axes": {"attack.params.poison_count": [4, 8]}}]})
    cells = expand_grid(spec, ["train.epochs=2"])
    assert [c.name for c in cells] == ["clean_s0", "clean_s1", "attack-ssl-backdoor_target-airplane_size-5_poison_count-4_seed-0",
                                       "attack-ssl-backdoor_target-airplane_size-5_poison_count-4_seed-1",
                                       "attack-ssl-backdoor_target-airplane_size-5_poison_count-8_seed-0",
                                       "attack-ssl-backdoor_target-airplane_size-5_poison_count-8_seed-1"]
    c = cells[4].config
    assert (c.name, c.seed, c.train.epochs, c.train.progress) == (cells[4].name, 0, 2, False)
    assert c.attack.params["poison_count"] == 8 and c.attack.params["trigger"] == {"size": 5}
    # a dotted override changes one nested value and keeps the rest of the preset's parameters
    bd = expand_grid(normalize_grid({"base": "carlini-backdoor-small", "axes": {"attack.params.trigger.size": [4]}}))[0]
    assert bd.config.attack.params["trigger"] == {"pattern": "checkerboard", "size": 4, "location": "random", "seed": 0}
    # a different component name drops the preset's parameters for the old one (as in a config file)
    none = expand_grid(normalize_grid({"base": "carlini-backdoor-small", "axes": {"attack.name": ["none"]}}))[0]
    assert none.config.attack.name == "none" and none.config.attack.params == {}


def test_bad_grids_fail_before_anything_runs(tmp_path):
    with pytest.raises(ConfigError, match="distinct names"):
        expand_grid(normalize_grid({"base": "simclr-small", "cells": [{"name": "a"}, {"name": "a", "seed": 1}]}))
    with pytest.raises(ConfigError, match="grid cell 'attack-nope'"):
        expand_grid(normalize_grid({"base": "simclr-small", "axes": {"attack.name": ["nope"]}}))
    with pytest.raises(ConfigError, match="non-empty lists"):
        normalize_grid({"base": "simclr-small", "axes": {"seed": 3}})
    with pytest.raises(ConfigError, match="neither a preset"):
        normalize_grid({"base": "no-such-preset", "axes": {"seed": [0]}})
    with pytest.raises(ConfigError, match="not one of the cell's keys"):
        expand_grid(normalize_grid({"base": "simclr-small", "cells": [{"name": "x{seed}"}]}))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("x")
    with pytest.raises(ConfigError, match="not a grid folder"):
        run_grid(grid_yaml(tmp_path / "g.yaml"), tmp_path / "other")
    assert not (tmp_path / "other" / "grid.json").exists()


class _Html(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.rows, self.tags = [], 0, []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.imgs.append(dict(attrs))
        if tag == "tr":
            self.rows += 1


@pytest.mark.slow
def test_grid_through_the_cli_interrupt_resume_change_and_report(tmp_path, capsys, monkeypatch):
    """The kill -9 and the two worker processes (``--jobs 2``) run in subprocesses; the other commands in this one."""
    g = grid_yaml(tmp_path / "g.yaml")
    monkeypatch.chdir(tmp_path)
    here = partial(clpoison_here, capsys)
    # 1. the first cell only (a cell limit), then a kill -9 in the second cell
    r = here("grid", "g.yaml", "--out", "out", "--max-cells", "1")
    assert r.returncode == 0, r.stderr[-2000:]
    out = tmp_path / "out"
    first = out / "cells" / "attack-none_defense-none" / "results.json"
    assert statuses(out) == {"attack-none_defense-none": "done", "attack-none_defense-localized-cropping": "pending",
                             "attack-ssl-backdoor_defense-none": "pending",
                             "attack-ssl-backdoor_defense-localized-cropping": "pending"}
    mtime = first.stat().st_mtime_ns
    r = clpoison("grid", "g.yaml", "--out", "out", cwd=tmp_path, fault_at=12)
    assert r.returncode == -9, r.stderr[-2000:]
    # 2. resumed: the finished cell is reused (not re-run), the rest run; no carriage returns in a non-TTY log
    r = here("grid", "g.yaml", "--out", "out")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "\r" not in r.stderr + r.stdout and "simclr epoch 1/1: loss" in r.stderr
    assert first.stat().st_mtime_ns == mtime
    assert statuses(out)["attack-none_defense-none"] == "reused"
    assert set(statuses(out).values()) <= {"done", "reused"}
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 4 and {r["status"] for r in rows} <= {"done", "reused"}
    assert {(r["attack.name"], r["defense.name"]) for r in rows} == {(a, d) for a in ("none", "ssl-backdoor")
                                                                     for d in ("none", "localized-cropping")}
    assert all(float(r["metrics.knn_top1"]) >= 0 for r in rows) and all(r["path"] for r in rows)
    assert all(r["metrics.asr"] != "" for r in rows if r["attack.name"] == "ssl-backdoor")
    assert (out / "cells" / "attack-none_defense-none" / "report.md").read_text().startswith("# Run attack-none")

    # 3. the report: HTML that parses, every plot embedded, the Markdown referencing every plot file
    r = here("report", "out", "--out", "rep")
    assert r.returncode == 0, r.stderr[-2000:]
    p = _Html()
    p.feed((tmp_path / "rep" / "report.html").read_text())
    plots = sorted(f.name for f in (tmp_path / "rep" / "plots").glob("*.png"))
    assert plots and sorted(Path(i["data-file"]).name for i in p.imgs) == plots
    assert all(i["src"].startswith("data:image/png;base64,") for i in p.imgs)
    md = (tmp_path / "rep" / "report.md").read_text()
    assert all(f"(plots/{f})" in md for f in plots) and "Wilson" in md
    table = md[md.index("## Results"):md.index("* Clean accuracy")]
    assert table.count("| no attack | none | 0 |") == 1 and table.count("| ssl-backdoor |") == 2  # the 4 settings
    assert "| ssl-backdoor | localized-cropping | 8 samples | 1 |" in table
    r = here("report", "out", "--out", "rep")
    assert r.returncode == 2 and "--overwrite" in r.stderr

    # 4. one axis value changed: only its two cells run (in two worker processes); a failing cell is recorded
    grid_yaml(g, defenses=("none", "grayscale"))
    r = clpoison("grid", "g.yaml", "--out", "out", "--jobs", "2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert statuses(out) == {"attack-none_defense-none": "reused", "attack-none_defense-grayscale": "done",
                             "attack-ssl-backdoor_defense-none": "reused",
                             "attack-ssl-backdoor_defense-grayscale": "done"}
    # 5. a cell that fails (more poisons than target images) is recorded with its error; the grid goes on
    grid_yaml(g, defenses=("none", "jpeg"), attacks=("ssl-backdoor", "none"), poison_count=500)
    r = here("grid", "g.yaml", "--out", "out")
    assert r.returncode == 1, r.stderr[-2000:]
    assert statuses(out) == {"attack-ssl-backdoor_defense-none": "failed", "attack-ssl-backdoor_defense-jpeg": "failed",
                             "attack-none_defense-none": "reused", "attack-none_defense-jpeg": "done"}
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 4 and sum(r["status"] == "failed" and "poison" in r["error"] for r in rows) == 2
