"""End-to-end: a poisoned CLIP run through the CLI (tiny model budget: 256 pairs, 1 epoch; ``clpoison.cli.main`` in
this process — tests/test_cli.py keeps the ``python -m clpoison`` subprocess)."""

import json

import pytest

from clpoison.poisoned.manifest import load_trigger
from clpoison.triggers import Trigger
from clpoison.experiments.config import load_preset

from cli_inprocess import clpoison_here

pytest.importorskip("clpoison.methods.clip")


@pytest.mark.slow
def test_poisoned_clip_run_through_cli(tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("preset: carlini-backdoor-small\n")
    out = tmp_path / "run"
    p = clpoison_here(capsys, "run", cfg, "train.epochs=1", "data.train_limit=256", "data.test_limit=64",
                      "train.batch_size=64", "eval.random_init_control=false", "attack.params.poison_rate=0.05",
                      "--out", out, "--no-progress")
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads((out / "results.json").read_text())
    m = res["metrics"]
    for k in ("asr", "asr_clean_accuracy", "asr_no_trigger", "backdoor_zscore", "zeroshot_top1"):
        assert k in m
    assert 0.0 <= m["asr"] <= 1.0 and 0 < m["asr_n"] < 64  # airplane test images are excluded
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["poisoned_indices"]) == round(0.05 * 256)
    spec = load_preset("carlini-backdoor-small")["attack"]["params"]["trigger"]
    assert load_trigger(manifest).sha256() == Trigger(spec).sha256()  # the preset's fixed trigger was used
