"""``torchrun --nproc_per_node 2 -m clpoison run`` end to end on a few hundred images (gloo on the CPU): SimCLR and
CLIP train, rank 0 alone writes results.json (and prints the table once), and a run stopped by ``kill -9`` after
its first checkpoint and re-run ends with the weights of the uninterrupted run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from clpoison.engine.checkpoint import read_checkpoint

from cli_inprocess import clpoison_here
from ddp_helpers import free_port

pytestmark = [pytest.mark.ddp, pytest.mark.slow]
TINY = ["data.train_limit=256", "data.test_limit=64", "model.width=4", "train.epochs=2", "train.batch_size=64",
        "eval.knn_k=5", "eval.random_init_control=false", "train.log_every=1", "--no-progress"]


def _torchrun(args, cwd, fault_at=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CLPOISON_FAULT_RANK": "0"}
    env.pop("CLPOISON_FAULT_AT", None)
    if fault_at is not None:
        env["CLPOISON_FAULT_AT"] = str(fault_at)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "clpoison", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _fault_log(args, cwd, log):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CLPOISON_FAULT_RANK": "0", "CLPOISON_FAULT_LOG": str(log)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "clpoison", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_torchrun_simclr_results_once_and_resume_is_identical(tmp_path, capsys, monkeypatch):
    (tmp_path / "c.yaml").write_text("preset: simclr-small\n")
    args = ["run", "c.yaml", *TINY, "method.params.proj_dim=16", "--out"]
    r = _fault_log(args + ["straight"], tmp_path, tmp_path / "points.log")
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("wrote ") == 1, r.stdout  # one table, from rank 0
    res = json.loads((tmp_path / "straight" / "results.json").read_text())
    assert res["environment"]["world_size"] == 2
    assert [h["epoch"] for h in res["history"]] == [1, 2]
    assert 0.0 < res["metrics"]["knn_top1"] <= 1.0
    steps = [json.loads(ln)["step"] for ln in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()
             if '"event"' not in ln]
    assert steps == list(range(1, 2 * (256 // 64) + 1)), "one writer: every step logged exactly once"
    straight = read_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    assert straight["world_size"] == 2 and len(straight["rng_ranks"]) == 2
    # kill rank 0 (torchrun then stops rank 1) just after the first epoch's checkpoint is in place
    points = [ln.split(" ", 1) for ln in (tmp_path / "points.log").read_text().splitlines()]
    at = min(int(i) for i, name in points if name.startswith("after-replace checkpoint"))
    r = _torchrun(args + ["resumed"], tmp_path, fault_at=at)
    assert r.returncode != 0
    assert not (tmp_path / "resumed").exists() and (tmp_path / "resumed.partial" / "checkpoint.pt").exists()
    assert read_checkpoint(tmp_path / "resumed.partial" / "checkpoint.pt")["epoch"] == 1
    monkeypatch.chdir(tmp_path)  # one process (this one, no launcher) refuses to resume a 2-process run
    one = clpoison_here(capsys, *args, "resumed")
    assert one.returncode == 2 and "written by 2 processes, this run has 1" in one.stderr, one.stderr[-2000:]
    assert (tmp_path / "resumed.partial" / "checkpoint.pt").exists()  # refused, not discarded
    r = _torchrun(args + ["resumed"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming from epoch 1/2" in r.stderr
    got = read_checkpoint(tmp_path / "resumed" / "checkpoint.pt")
    for name, w in straight["model"].items():
        assert torch.equal(w, got["model"][name]), name
    assert json.loads((tmp_path / "resumed" / "results.json").read_text())["metrics"] == res["metrics"]


def test_torchrun_clip_attack_once_and_safeclip(tmp_path):
    """CLIP under a Carlini backdoor (poisoned once, on rank 0, sent to rank 1 and fingerprint-checked there) with
    SafeCLIP: its similarity pass is split over the ranks and gathered, so both ranks train on one split."""
    (tmp_path / "c.yaml").write_text("preset: carlini-backdoor-small\ndefense:\n  name: safeclip\n")
    params = ["defense.params.inmodal_epochs=1", "defense.params.crossmodal_epochs=1", "defense.params.warmup_epochs=0.5",
              "attack.params.poison_rate=0.05"]
    r = _torchrun(["run", "c.yaml", *TINY, "train.epochs=3", *params, "--out", "clip"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("wrote ") == 1
    res = json.loads((tmp_path / "clip" / "results.json").read_text())
    assert res["environment"]["world_size"] == 2 and "zeroshot_top1" in res["metrics"] and "asr" in res["metrics"]
    assert [h["safeclip_phase"] for h in res["history"]] == ["inmodal", "crossmodal", "filtered"]
    h = res["history"][2]
    assert h["safeclip_safe"] + h["safeclip_risky"] == 256 and 0 < h["safeclip_safe"] < 256
    assert all(v["loss"] == v["loss"] for v in res["history"])  # finite
    assert (tmp_path / "clip" / "manifest.json").exists() and (tmp_path / "clip" / "tokenizer.json").exists()


def test_batch_not_divisible_by_processes_is_one_line(tmp_path):
    (tmp_path / "c.yaml").write_text("preset: simclr-small\n")
    r = _torchrun(["run", "c.yaml", *TINY, "train.batch_size=63", "--out", "odd"], tmp_path)
    assert r.returncode != 0
    assert "train.batch_size=63 is not divisible by the 2 processes" in r.stderr
    assert not (tmp_path / "odd").exists()


@pytest.mark.parametrize("preset", ["mocov2-small", "byol-small"])
def test_torchrun_mocov2_and_byol_train(tmp_path, preset):
    (tmp_path / "c.yaml").write_text(f"preset: {preset}\n")
    extra = ["method.params.queue_size=96", "method.params.bn_splits=2"] if preset == "mocov2-small" else []
    r = _torchrun(["run", "c.yaml", *TINY, "train.epochs=1", "eval.linear=false", *extra, "--out", "m"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "m" / "results.json").read_text())
    assert res["environment"]["world_size"] == 2 and res["history"][0]["step"] == 256 // 64
    assert res["history"][0]["loss"] == res["history"][0]["loss"] and 0 < res["metrics"]["knn_top1"] <= 1
    if preset == "mocov2-small":  # both ranks enqueued the keys of both: the queue pointer moved by the global batch
        ckpt = read_checkpoint(tmp_path / "m" / "checkpoint.pt")
        assert int(ckpt["model"]["queue_ptr"]) == (256 // 64 * 64) % 96 == 64


def test_torchrun_roclip_matching_epoch_and_results_once(tmp_path):
    """RoCLIP on 256 bundled caption pairs: epoch 2 matches images to the pooled captions (the text tower idle, so
    DDP must allow unused parameters), every rank pushes the global batch's captions; results.json is written once."""
    (tmp_path / "c.yaml").write_text("preset: roclip-small\n")
    r = _torchrun(["run", "c.yaml", *TINY, "defense.params.pool_size=128", "eval.linear=false", "--out", "ro"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("wrote ") == 1, r.stdout
    res = json.loads((tmp_path / "ro" / "results.json").read_text())
    assert res["environment"]["world_size"] == 2 and "zeroshot_top1" in res["metrics"]
    assert [h["roclip_matching"] for h in res["history"]] == [False, True]
    assert all(h["loss"] == h["loss"] for h in res["history"])  # finite
    assert sorted(p.name for p in (tmp_path / "ro").iterdir() if p.name == "results.json") == ["results.json"]
    pool = read_checkpoint(tmp_path / "ro" / "checkpoint.pt")
    assert pool["world_size"] == 2


def test_torchrun_cleanclip_finetunes_with_each_process_share(tmp_path):
    """CleanCLIP re-batches the pairs with the checkpoint's tokenizer: under torchrun each process keeps its share of
    every global batch (128 pairs / global batch 32 = 4 steps, not 8 per process), and rank 0 writes once."""
    from clpoison.experiments.config import build_config
    from clpoison.experiments.runner import run_experiment

    ov = ["train.epochs=1", "data.train_limit=128", "data.test_limit=32", "train.batch_size=32",
          "eval.random_init_control=false", "eval.linear=false", "train.progress=false"]
    run_experiment(build_config({"preset": "clip-small"}, ov), tmp_path / "p")
    (tmp_path / "c.yaml").write_text(f"preset: clip-small\ndefense:\n  name: cleanclip\n  params: "
                                     f"{{checkpoint: {tmp_path / 'p'}, finetune_pairs: 128}}\n")
    r = _torchrun(["run", "c.yaml", *ov, "--out", "cc"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("wrote ") == 1, r.stdout
    res = json.loads((tmp_path / "cc" / "results.json").read_text())
    assert res["environment"]["world_size"] == 2 and res["defense"]["cleanclip_finetune_pairs"] == 128
    assert [h["step"] for h in res["history"]] == [128 // 32]
    assert res["history"][0]["loss"] == res["history"][0]["loss"] and 0 <= res["metrics"]["zeroshot_top1"] <= 1
    assert (tmp_path / "cc" / "tokenizer.json").read_text() == (tmp_path / "p" / "tokenizer.json").read_text()
