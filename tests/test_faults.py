"""Fault test: SIGKILL (``kill -9``) at seeded random fault points (:mod:`clpoison.utils.faults`) of a tiny run and
of an export. After each kill nothing half-written is visible under the final name, and re-running the same
command ends identical to an uninterrupted run (same weights, same metrics; the same export bytes). A full disk
while writing a checkpoint leaves the previous checkpoint intact and ends in one line.

Each kill and its re-run go to their own output folder, so the kill points are independent: two of them run at a
time (every subprocess is single-threaded, ``OMP_NUM_THREADS=1``), which halves the wall time on two cores without
dropping a subprocess or a check."""

import errno
import json
import os
import random
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from clpoison.engine.checkpoint import read_checkpoint

RUN_KILLS, EXPORT_KILLS = 2, 2  # seeded random fault points per test, besides one of each named kind below
TINY = ["data.train_limit=64", "data.test_limit=32", "model.width=4", "train.epochs=2", "train.batch_size=32",
        "method.params.proj_dim=16", "eval.knn_k=5", "eval.random_init_control=false", "train.log_every=1",
        "--no-progress"]


def _clpoison(args, cwd, fault_at=None, fault_log=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("CLPOISON_FAULT_AT", None)
    if fault_at is not None:
        env["CLPOISON_FAULT_AT"] = str(fault_at)
    if fault_log is not None:
        env["CLPOISON_FAULT_LOG"] = str(fault_log)
    return subprocess.run([sys.executable, "-m", "clpoison", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def _kill_and_rerun(args, cwd, k, then=()):
    """Kill the command at fault point ``k`` (is ``out`` visible then?), re-run it, then run ``then`` (more args)."""
    out = cwd / args[-1]
    killed = _clpoison(args, cwd, fault_at=k)
    visible = out.exists()
    return killed, visible, _clpoison(args, cwd), *[_clpoison(t, cwd) for t in then]


def _each_kill(args, cwd, kills, then=lambda name: ()):
    """``_kill_and_rerun`` at every kill point into ``k{point}``, two at a time; results in the order of ``kills``."""
    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(lambda k: _kill_and_rerun([*args, f"k{k}"], cwd, k, then(f"k{k}")), kills))


def _points(log):
    return [ln.split(" ", 1) for ln in log.read_text().splitlines()]


def _pick(points, named, n, seed):
    """Fault points to kill at: the last point of each kind in ``named``, plus ``n`` seeded random ones."""
    must = [max(int(i) for i, name in points if name.startswith(prefix)) for prefix in named]
    rest = [int(i) for i, _ in points if int(i) not in must]
    return sorted(set(must + random.Random(seed).sample(rest, min(n, len(rest)))))


def test_kill_9_during_a_run_then_rerun_is_identical(tmp_path):
    (tmp_path / "c.yaml").write_text("preset: simclr-small\n")
    args = ["run", "c.yaml", *TINY, "--out"]
    r = _clpoison(args + ["straight"], tmp_path, fault_log=tmp_path / "points.log")
    assert r.returncode == 0, r.stderr
    straight = read_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    metrics = json.loads((tmp_path / "straight" / "results.json").read_text())["metrics"]
    points = _points(tmp_path / "points.log")
    kills = _pick(points, ("publish-run", "evaluate", "before-replace checkpoint", "writing checkpoint"), RUN_KILLS,
                  seed=0)  # "writing": a kill while the temporary checkpoint is still empty (issue 29)
    for k, (r, visible, rerun) in zip(kills, _each_kill(args, tmp_path, kills)):
        out = tmp_path / f"k{k}"
        assert r.returncode == -9, (k, r.stderr)
        assert not visible, f"killed at point {k} ({points[k - 1][1]}): a half-written {out.name} is visible"
        assert rerun.returncode == 0, (k, rerun.stderr)
        got = read_checkpoint(out / "checkpoint.pt")
        assert all(torch.equal(straight["model"][n], got["model"][n]) for n in straight["model"]), k
        assert json.loads((out / "results.json").read_text())["metrics"] == metrics, k
        steps = [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines() if '"event"' not in ln]
        assert steps == sorted(set(steps)), f"duplicate or missing step records after a kill at {k}"
        assert not (tmp_path / f"{out.name}.partial").exists()
        assert not list(out.rglob("*.tmp")), f"a killed writer's temporary file was published (kill at {k})"
    assert len(kills) == RUN_KILLS + 4


def _content(export):
    """Every file's sha256 (SHA256SUMS) and the manifest, less its timings (``details.*_seconds``, ``*_per_s``)."""
    sums = [ln for ln in (export / "SHA256SUMS").read_text().splitlines() if not ln.endswith("manifest.json")]
    m = json.loads((export / "manifest.json").read_text())
    m["details"] = {k: v for k, v in m.get("details", {}).items() if not k.endswith(("_seconds", "_per_s"))}
    return sums, m


def test_kill_9_during_an_export_then_rerun_is_identical(tmp_path):
    r = np.random.default_rng(0)
    np.savez(tmp_path / "clean.npz", x_train=r.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8),
             y_train=np.arange(40) % 2, x_test=r.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8),
             y_test=np.arange(8) % 2, class_names=np.array(["a", "b"]))
    args = ["poison", "ssl-backdoor", "--data", "clean.npz", "target=a", "poison_count=6", "trigger.size=4",
            "--no-progress", "--out"]
    res = _clpoison(args + ["straight"], tmp_path, fault_log=tmp_path / "points.log")
    assert res.returncode == 0, res.stderr
    sums = _content(tmp_path / "straight")
    points = _points(tmp_path / "points.log")
    kills = _pick(points, ("publish-export", "export-data"), EXPORT_KILLS, seed=1)
    for k, (res, visible, rerun, verify) in zip(kills, _each_kill(args, tmp_path, kills, lambda name: [["verify", name]])):
        out = tmp_path / f"k{k}"
        assert res.returncode == -9, (k, res.stderr)
        assert not visible, f"killed at point {k} ({points[k - 1][1]}): a half-written {out.name} is visible"
        assert rerun.returncode == 0, (k, rerun.stderr)
        assert _content(out) == sums, k
        assert not list(tmp_path.glob(f".{out.name}.*partial")), "a killed export's partial was left behind"
        assert verify.returncode == 0, (k, verify.stderr)


def test_disk_full_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    from clpoison.errors import DataError
    from clpoison.utils import io

    path = tmp_path / "checkpoint.pt"
    io.atomic_torch_save({"model": {"w": torch.ones(2)}}, path)
    before = path.read_bytes()

    def full(obj, f):
        with open(f, "wb") as fh:
            fh.write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io.torch, "save", full)
    with pytest.raises(DataError, match="no space left"):
        io.atomic_torch_save({"model": {"w": torch.zeros(2)}}, path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
