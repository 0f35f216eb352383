"""Optional TensorBoard scalars (`train.tensorboard=true`): one point per epoch, no duplicates after a resume; a
clear line without the package."""

from __future__ import annotations

import builtins
import json

import pytest

from clpoison.cli import main

TINY = ["data.train_limit=256", "data.test_limit=64", "model.width=4", "train.batch_size=64", "train.warmup_epochs=0",
        "method.params.proj_dim=16", "eval.knn_k=5", "eval.random_init_control=false", "eval.linear=false",
        "--no-progress"]


def _scalars(folder):
    acc_mod = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = acc_mod.EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_epoch_scalars_match_the_log(tmp_path, capsys):
    pytest.importorskip("torch.utils.tensorboard", reason="tensorboard is not installed (optional: pip install tensorboard)")
    out = tmp_path / "r"
    assert main(["pretrain", "simclr", *TINY, "train.epochs=2", "train.tensorboard=true", "--out", str(out)]) == 0
    sc = _scalars(out / "tensorboard")
    assert [s for s, _ in sc["simclr/loss"]] == [1, 2] and [s for s, _ in sc["simclr/lr"]] == [1, 2]
    epochs = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines() if '"event": "epoch"' in ln]
    assert [round(v, 4) for _, v in sc["simclr/loss"]] == [round(r["loss"], 4) for r in epochs]
    assert "simclr/samples_per_s" in sc


def test_missing_package_is_one_line(tmp_path, capsys, monkeypatch):
    real_import = builtins.__import__

    def no_tensorboard(name, globals=None, locals=None, fromlist=(), level=0):
        if level == 0 and (name.startswith("torch.utils.tensorboard") or name.startswith("tensorboard")):
            raise ImportError(name)
        return real_import(name, globals, locals, fromlist, level)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    assert main(["pretrain", "simclr", *TINY, "train.epochs=1", "train.tensorboard=true", "--out",
                 str(tmp_path / "r")]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "pip install tensorboard" in err[0], err
    assert list(tmp_path.iterdir()) == []  # nothing half-written (no r, no r.partial)
