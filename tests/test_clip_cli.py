"""End-to-end: `clpoison demo clip` / `run` / `evaluate` on ~256 pairs with a tiny model; config errors."""

import json

import pytest
import torch

from clpoison.cli import main
from clpoison.errors import ConfigError
from clpoison.experiments.config import build_config

torch.set_num_threads(2)

TINY = [
    "data.train_limit=256", "data.test_limit=64", "train.epochs=2", "train.batch_size=64", "train.warmup_epochs=0",
    "model.width=4", "method.params.text_width=16", "method.params.text_layers=1", "method.params.text_heads=2",
    "method.params.embed_dim=16", "method.params.vocab_size=300", "eval.knn_k=10",
]


def test_demo_clip_end_to_end_and_evaluate(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["--threads", "2", "demo", "clip", *TINY, "--out", str(out), "--no-progress"]) == 0
    res = json.loads((out / "results.json").read_text())
    m = res["metrics"]
    for k in ("zeroshot_top1", "zeroshot_top1_random_init", "recall_at_5_i2t", "recall_at_5_t2i", "recall_at_1_t2i",
              "linear_top1", "knn_top1"):
        assert 0.0 <= m[k] <= 1.0, k
    assert set(res) >= {"metrics", "config", "timings", "environment"}
    assert res["config"]["method"]["name"] == "clip" and res["data"]["train_pairs"] == 256
    assert (out / "tokenizer.json").exists() and (out / "checkpoint.pt").exists()
    assert len(res["history"]) == 2
    # evaluate the checkpoint (tokenizer comes from the checkpoint)
    assert main(["evaluate", str(out), "--out", str(tmp_path / "ev.json")]) == 0
    ev = json.loads((tmp_path / "ev.json").read_text())["metrics"]
    assert ev["zeroshot_top1"] == pytest.approx(m["zeroshot_top1"], abs=1e-6)


def test_run_clip_from_yaml_with_csv(tmp_path):
    import numpy as np
    from PIL import Image

    (tmp_path / "im").mkdir()
    rows = ["filepath,title"]
    for i in range(80):
        Image.fromarray(np.full((12, 12, 3), 3 * i, np.uint8)).save(tmp_path / "im" / f"{i}.png")
        rows.append(f"im/{i}.png,{'bright' if i > 40 else 'dark'} square number {i}")
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"preset: clip-small\ndata: {{name: captions-csv, path: {tmp_path / 'pairs.csv'}}}\n")
    over = [o for o in TINY if not o.startswith("data.")] + ["train.batch_size=32", "data.test_limit=16"]
    assert main(["run", str(cfg), *over, "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    m = json.loads((tmp_path / "run" / "results.json").read_text())["metrics"]
    assert "recall_at_5_t2i" in m and "zeroshot_top1" not in m  # no class names in this CSV


def test_clip_config_errors(tmp_path, capsys):
    with pytest.raises(ConfigError, match="unknown key"):
        build_config({"preset": "clip-small"}, ["data.captions.colour=red"])
    with pytest.raises(ConfigError, match="unknown caption dataset"):
        build_config({"preset": "clip-small"}, ["data.name=captions-json"])
    assert main(["demo", "clip", "data.name=captions-csv", "--out", str(tmp_path / "y")]) == 2
    assert "captions-csv needs data.path" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="text_width"):
        build_config({"preset": "clip-small"}, ["method.params.text_heads=3"])
    with pytest.raises(ConfigError, match="tokenizer"):
        build_config({"preset": "clip-small"}, [f"method.params.tokenizer={tmp_path}/none.json"])
    assert main(["demo", "clip", "data.captions.on_error=maybe", "--out", str(tmp_path / "x")]) == 2
    assert "on_error" in capsys.readouterr().err
    build_config({"preset": "clip-rn50-cc3m"}, ["data.path=" + str(tmp_path)])
