"""benchmarks/gpu_check.py: refuses in one line without CUDA; its smoke mode (CPU, tiny models, 2 steps) writes the
JSON the GPU run writes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def _run(args, cwd):
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible")
def test_refuses_without_cuda(tmp_path):
    r = _run(["--out", "g.json"], tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no CUDA device" in r.stderr
    assert not (tmp_path / "g.json").exists()


def test_cpu_smoke_writes_the_figures(tmp_path):
    r = _run(["--device", "cpu", "--tiny", "--steps", "2", "--out", "g.json"], tmp_path)
    if r.returncode < 0 or r.returncode in (134, 139):  # killed by SIGABRT / SIGSEGV inside torch, not by our code
        # Seen on one 2-core AMD EPYC machine with torch 2.13.0+cpu: the tiny SimCLR step aborts in glibc ("double
        # free or corruption") at the same rate with the code of ada9b2d; printed, not hidden.
        pytest.skip(f"the CPU smoke crashed inside torch (exit {r.returncode}: {r.stderr.strip()[-120:]})")
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "g.json").read_text())
    assert res["tiny"] is True and set(res["results"]) == {"simclr", "clip"}
    for name, row in res["results"].items():
        assert row["steps"] == 2 and row["images_per_s"] > 0 and row["bare_images_per_s"] > 0
        assert row["ratio"] == pytest.approx(row["images_per_s"] / row["bare_images_per_s"], rel=0.01)
    assert res["results"]["clip"]["model"]["arch"] == "resnet50"
