"""``reuse_only`` (a benchmark's ``--scores-only``): a finished run of the same config is reused, anything else stops
with one line and nothing is trained or exported."""

from __future__ import annotations

import json

import pytest

from clpoison.errors import ConfigError
from clpoison.experiments.config import build_config
from clpoison.experiments.runner import run_or_reuse

from _harness import reuse_or_export, run_named  # benchmarks/_harness.py (tests/conftest.py puts it on the path)


def test_reuse_only_reuses_a_finished_run_and_never_trains(tmp_path):
    cfg = build_config({"preset": "simclr-small"}, ["train.epochs=1"])
    with pytest.raises(ConfigError, match="nothing is trained") as e:
        run_or_reuse(cfg, tmp_path / "r", reuse_only=True)
    assert "\n" not in str(e.value) and not (tmp_path / "r").exists() and not list(tmp_path.iterdir())
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "results.json").write_text(json.dumps({"config": cfg.to_dict(), "metrics": {"x": 1.0}}))
    res, reused = run_or_reuse(cfg, tmp_path / "r", reuse_only=True)
    assert reused and res["metrics"] == {"x": 1.0}
    with pytest.raises(ConfigError, match="nothing is trained"):  # another config: not reused, not trained
        run_or_reuse(build_config({"preset": "simclr-small"}, ["train.epochs=2"]), tmp_path / "r", reuse_only=True)
    named = build_config({"preset": "simclr-small", "name": "r"}, ["train.progress=false", "train.epochs=1"])
    (tmp_path / "r" / "results.json").write_text(json.dumps({"config": named.to_dict(), "metrics": {}}))
    assert run_named("r", {"preset": "simclr-small"}, ["train.epochs=1"], tmp_path, None, reuse_only=True)[1]


def test_reuse_only_never_exports(tmp_path):
    with pytest.raises(ConfigError, match="nothing is exported"):
        reuse_or_export("carlini-backdoor", {}, "cifar10-subset", tmp_path / "e", 0, 32, reuse_only=True)
    assert not (tmp_path / "e").exists()
