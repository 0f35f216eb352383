"""End-to-end: SafeCLIP on a Carlini-poisoned dataset through the CLI (``clpoison.cli.main`` in this process: no
command here needs a process of its own), then `clpoison scan` on its checkpoint."""

import csv
import json
from functools import partial

import pytest
from cli_inprocess import clpoison_here
from interrupt import interrupt_and_resume


@pytest.mark.slow
def test_safeclip_run_and_scan(tmp_path, capsys):
    clpoison = partial(clpoison_here, capsys)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("preset: carlini-backdoor-small\ndefense:\n  name: safeclip\n")
    out = tmp_path / "run"
    params = ["defense.params.inmodal_epochs=1", "defense.params.crossmodal_epochs=1", "defense.params.warmup_epochs=0.5",
              "defense.params.eval_batch_size=256"]
    r = clpoison("run", str(cfg), "train.epochs=3", "data.train_limit=256", "data.test_limit=64", "train.batch_size=64",
                 "eval.random_init_control=false", "attack.params.poison_rate=0.05", *params,
                 "--out", str(out), "--no-progress")
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((out / "results.json").read_text())
    phases = [h["safeclip_phase"] for h in res["history"]]
    assert phases == ["inmodal", "crossmodal", "filtered"]
    h = res["history"][2]
    assert h["safeclip_safe"] + h["safeclip_risky"] == 256 and 0 < h["safeclip_safe"] < 256  # poisons replace captions
    assert "safeclip_poison_recall_risky" in res["history"][2]
    assert "asr" in res["metrics"] and "zeroshot_top1" in res["metrics"]
    assert (out / "safeclip" / "similarity_epoch003.png").exists()

    csv_path = tmp_path / "risk.csv"
    r = clpoison("scan", str(out), "--data", "cifar10-subset", "--out", str(csv_path))
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads(r.stdout[r.stdout.index("{"):])
    assert summary["risky"] == -(-summary["pairs"] * 5 // 100)  # the lowest 5 % by default
    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) >= 256
    # the run's manifest describes its poisoned data, not the clean source: refused (tests/test_captions_protocol.py
    # scans an export against its manifest)
    r = clpoison("scan", str(out), "--data", "cifar10-subset", "--out", str(tmp_path / "y.csv"),
                 "--manifest", str(out / "manifest.json"))
    assert r.returncode == 2 and ("images but" in r.stderr or "clean data" in r.stderr)
    r = clpoison("scan", str(tmp_path / "missing"), "--data", "cifar10-subset", "--out", str(tmp_path / "x.csv"))
    assert r.returncode == 2 and "does not exist" in r.stderr and not (tmp_path / "x.csv").exists()


@pytest.mark.slow
def test_safeclip_resume_mid_filtering_is_exact(tmp_path, monkeypatch):
    """Interrupted in the second filtering epoch, the same command resumes from the last checkpoint (the filter
    schedule comes back from the history, the reused scores of split_every=2 from the run folder) and ends
    exactly like an uninterrupted run."""
    from clpoison.defenses.safeclip.safeclip import SafeCLIP
    from clpoison.experiments.config import build_config
    from clpoison.experiments.runner import run_experiment

    ov = ["train.epochs=5", "data.train_limit=256", "data.test_limit=64", "train.batch_size=64",
          "eval.random_init_control=false", "attack.params.poison_rate=0.05", "train.progress=false",
          "defense.name=safeclip", "defense.params.inmodal_epochs=1", "defense.params.crossmodal_epochs=1",
          "defense.params.warmup_epochs=0.5", "defense.params.eval_batch_size=256", "defense.params.histograms=false",
          "defense.params.split_every=2"]
    cfg = build_config({"preset": "carlini-backdoor-small"}, ov)
    straight = run_experiment(cfg, tmp_path / "a")

    resumed = interrupt_and_resume(monkeypatch, SafeCLIP, cfg, tmp_path / "b", 4)  # the 2nd filtering epoch
    key = ("safeclip_phase", "safeclip_rule", "safeclip_safe", "safeclip_safe_fraction", "loss")
    assert [h.get("safeclip_rule") for h in straight["history"]][2:] == ["threshold", "ratio (scores reused)", "ratio"]
    assert [[h.get(k) for k in key] for h in resumed["history"]] == [[h.get(k) for k in key] for h in straight["history"]]
    assert resumed["metrics"]["asr"] == straight["metrics"]["asr"]
    assert resumed["metrics"]["zeroshot_top1"] == straight["metrics"]["zeroshot_top1"]
