"""``clpoison run --dry-run`` and the gradient all-reduce: with one process the plan reports the gradient bytes and
says the all-reduce is not measured; under torchrun (2 gloo processes) every process joins, rank 0 prints one plan
with the measured all-reduce per step and its share of the step."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from clpoison.experiments.config import build_config
from clpoison.experiments.plan import format_plan, plan_experiment

from ddp_helpers import free_port

TINY = ["data.train_limit=256", "data.test_limit=64", "model.width=4", "train.epochs=2", "train.batch_size=64",
        "eval.knn_k=5", "method.params.proj_dim=16"]
LAUNCHER_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RUN_ID", "SLURM_PROCID", "SLURM_NTASKS")


@pytest.fixture
def alone(monkeypatch):
    for k in LAUNCHER_KEYS:
        monkeypatch.delenv(k, raising=False)
    return monkeypatch


def _grad_mb(plan) -> float:
    return plan["allreduce"]["gradient_mb"]


def test_one_process_reports_the_gradient_bytes_not_a_time(alone):
    cfg = build_config({"preset": "simclr-small"}, TINY)
    plan = plan_experiment(cfg, measure_steps=1)
    ar = plan["allreduce"]
    assert ar == {"gradient_mb": _grad_mb(plan), "measured": False}
    assert 0 < ar["gradient_mb"] <= plan["memory_mb"]["parameters"]  # trainable fp32 parameters
    text = format_plan(plan)
    line = next(ln for ln in text.splitlines() if ln.startswith("all-reduce:"))
    assert line == (f"all-reduce: {ar['gradient_mb']} MB of fp32 gradients per step; not measured with one process "
                    "(start the dry run with torchrun / srun on the processes of the run to time it)")
    assert "(per process; gradient all-reduce not included)" in text


def test_planning_for_8_from_one_process_does_not_join(alone):
    """``RANK=0 WORLD_SIZE=8`` without a launcher plans for 8 processes and waits for nobody."""
    alone.setenv("RANK", "0")
    alone.setenv("WORLD_SIZE", "8")
    plan = plan_experiment(build_config({"preset": "simclr-small"}, TINY), measure_steps=1)
    assert plan["processes"] == 8 and plan["batch"]["per_process"] == 8 and not plan["allreduce"]["measured"]
    moved = round(2 * 7 / 8 * _grad_mb(plan), 1)
    assert f"a ring all-reduce over 8 processes sends (and receives) {moved} MB per process; not measured" in format_plan(plan)


@pytest.mark.ddp
def test_torchrun_dry_run_measures_the_allreduce(tmp_path):
    (tmp_path / "c.yaml").write_text("preset: simclr-small\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2", "--master_addr",
           "127.0.0.1", "--master_port", str(free_port()), "-m", "clpoison", "run", "c.yaml", *TINY, "--dry-run",
           "--out", "never"]
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("# plan") == 1, r.stdout  # rank 0 prints the plan once
    assert "processes: 2 on cpu; batch 64 global = 32 per process" in r.stdout
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("all-reduce:"))
    m = re.fullmatch(r"all-reduce: ([\d.]+) MB of fp32 gradients per step, measured ([\d.]+) s per all-reduce over 2 "
                     r"processes \(mean of 5 after a warm-up, slowest process\), ≈ ([\d.]+)% of a step \(an upper "
                     r"bound: DDP overlaps it with the backward\)", line)
    assert m, line
    assert float(m.group(1)) > 0 and float(m.group(2)) > 0 and 0 < float(m.group(3)) < 100
    assert "(per process; the all-reduce added, without overlap)" in r.stdout
    assert not (tmp_path / "never").exists() and not (tmp_path / "never.partial").exists()
