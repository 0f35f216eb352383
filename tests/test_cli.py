"""End-to-end: the real CLI in a subprocess; bad input ends in one clear line, exit 2, nothing written."""

import json
import os
import subprocess
import sys

import pytest

from cli_inprocess import clpoison_here

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "2"}
TINY = [
    "data.train_limit=256", "data.test_limit=128", "model.width=4", "train.epochs=1", "train.batch_size=64",
    "method.params.proj_dim=16", "eval.knn_k=20", "--no-progress",
]


def clpoison(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "clpoison", *args], capture_output=True, text=True, env=ENV, cwd=cwd, timeout=300)


@pytest.mark.slow
def test_run_end_to_end(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("preset: simclr-small\nname: e2e\n")
    out = tmp_path / "run"
    r = clpoison("run", str(cfg), *TINY, "--out", str(out))
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "results.json").read_text())
    assert {"metrics", "config", "timings", "environment"} <= set(res)
    m = res["metrics"]
    for k in ("knn_top1", "knn_top1_random_init", "linear_top1"):
        assert 0.0 <= m[k] <= 1.0
    assert res["config"]["train"]["epochs"] == 1 and res["data"]["train_images"] == 256
    assert (out / "checkpoint.pt").exists() and (out / "metrics.jsonl").exists()
    assert not (tmp_path / "run.partial").exists()
    # evaluate the checkpoint again through the CLI: same kNN top-1
    r = clpoison("evaluate", str(out), "data.train_limit=256", "data.test_limit=128", "eval.knn_k=20")
    assert r.returncode == 0, r.stderr
    assert abs(json.loads(r.stdout)["knn_top1"] - m["knn_top1"]) < 1e-6
    # the output exists: refusing to overwrite is a one-line error
    r = clpoison("run", str(cfg), *TINY, "--out", str(out))
    assert r.returncode == 2 and "--overwrite" in r.stderr


@pytest.mark.slow
@pytest.mark.parametrize("method", ["mocov2", "byol"])
def test_pretrain_other_methods(tmp_path, method):
    out = tmp_path / method
    extra = ["method.params.queue_size=128"] if method == "mocov2" else ["method.params.pred_hidden_dim=16"]
    r = clpoison("pretrain", method, *TINY, "method.params.proj_hidden_dim=16", *extra, "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "results.json").read_text())["config"]["method"]["name"] == method


@pytest.mark.parametrize(
    "args, needle",
    [
        (["data.name=npz", "data.path=/no/such.npz"], "does not exist"),
        (["method.name=simclrr"], "unknown method"),
        (["train.bogus=3"], "train.bogus"),
        (["train.epochs=0"], "train.epochs"),
        (["train.batch_size=100000"], "larger than the dataset"),
    ],
)
def test_bad_input_is_one_line_exit_2_no_output(tmp_path, args, needle, capsys):
    """The CLI's own error path (``clpoison.cli.main`` in this process); the real process's exit status and its
    stderr of one line are checked once, by test_missing_config_file."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("preset: simclr-small\n")
    out = tmp_path / "out"
    r = clpoison_here(capsys, "run", str(cfg), "data.train_limit=256", *args, "--out", str(out), "--no-progress")
    assert r.returncode == 2, r.stderr
    lines = [l for l in r.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], r.stderr
    assert not out.exists() and not (tmp_path / "out.partial").exists()


def test_missing_config_file(tmp_path):
    """A bad input in a real ``python -m clpoison`` process: exit 2, one line on stderr, nothing written."""
    r = clpoison("run", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "o"))
    lines = [l for l in r.stderr.strip().splitlines() if l.strip()]
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:") and "does not exist" in lines[0], r.stderr
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.partial").exists()


def test_help_and_listing():
    r = clpoison("--help")
    assert r.returncode == 0 and "run" in r.stdout and "demo" in r.stdout
    r = clpoison("datasets")
    assert "cifar10-subset" in r.stdout and "imagefolder" in r.stdout
    r = clpoison("presets")
    assert "simclr-small" in r.stdout
