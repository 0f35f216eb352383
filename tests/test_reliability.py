"""Reliability: one writer per output (lock), resume only onto the same config and data, a resumed run says so and
its metrics log has no duplicate steps, a non-finite loss keeps the last good checkpoint, exports refuse an
existing folder and clean the partials of dead exports."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from clpoison.poisoned.export import export_poisoned
from clpoison.cli import main
from clpoison.data.datasets import ImageDataset, ImageSplits
from clpoison.engine import trainer as trainer_mod
from clpoison.engine.checkpoint import read_checkpoint
from clpoison.errors import ConfigError, TrainingDiverged
from clpoison.utils.lock import OutputLock, lock_path

TINY = ["data.train_limit=64", "data.test_limit=32", "model.width=4", "train.epochs=2", "train.batch_size=32",
        "method.params.proj_dim=16", "eval.knn_k=5", "eval.random_init_control=false", "eval.linear=false",
        "attack.name=ssl-backdoor", "attack.params.target=0", "attack.params.poison_count=4",
        "attack.params.trigger.size=4"]  # an attack whose manifest holds timings


def _npz(path, seed=0):
    r = np.random.default_rng(seed)
    np.savez(path, x_train=r.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8), y_train=r.integers(0, 2, 64),
             x_test=r.integers(0, 256, (32, 32, 32, 3), dtype=np.uint8), y_test=r.integers(0, 2, 32))


@pytest.fixture
def setup(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("preset: simclr-small\n")
    _npz(tmp_path / "d.npz")
    argv = ["run", str(cfg), *TINY, "data.name=npz", f"data.path={tmp_path / 'd.npz'}", "--out", str(tmp_path / "o")]
    return tmp_path, argv


def _interrupt_after_epoch(monkeypatch, epoch=1):
    """Make the next run stop (KeyboardInterrupt) right after the checkpoint of ``epoch``."""
    orig = trainer_mod.Trainer.save_checkpoint

    def save(self):
        orig(self)
        if self.epoch == epoch:
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer_mod.Trainer, "save_checkpoint", save)
    return lambda: monkeypatch.setattr(trainer_mod.Trainer, "save_checkpoint", orig)


def _err(capsys):
    return [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]


def test_resume_says_so_matches_straight_run_and_log_has_no_duplicate_steps(setup, monkeypatch, capsys):
    tmp, argv = setup
    straight = argv[:-1] + [str(tmp / "straight")]
    assert main(straight + ["--no-progress"]) == 0
    restore = _interrupt_after_epoch(monkeypatch)
    assert main(argv + ["--no-progress"]) == 130
    restore()
    partial = tmp / "o.partial"
    # a step record logged after the checkpoint (the kill came later): the resumed run must not repeat it
    with open(partial / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 3, "loss": 1.0}) + "\n" + '{"step": 4, "lo')
    capsys.readouterr()
    assert main(argv) == 0  # progress bar on this time: a presentation key, so the run resumes
    assert any("resuming from epoch 1/2" in ln for ln in _err(capsys))
    steps = [json.loads(ln).get("step") for ln in (tmp / "o" / "metrics.jsonl").read_text().splitlines()
             if "event" not in ln]
    assert len(steps) == len(set(steps))
    a, b = (read_checkpoint(tmp / d / "checkpoint.pt") for d in ("straight", "o"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert b["fingerprint"] == json.loads((tmp / "o" / "fingerprint.json").read_text())


def test_resume_refuses_changed_data_and_config(setup, monkeypatch, capsys):
    tmp, argv = setup
    restore = _interrupt_after_epoch(monkeypatch)
    assert main(argv + ["--no-progress"]) == 130
    restore()
    _npz(tmp / "d.npz", seed=1)  # the dataset file is replaced while the run is interrupted
    capsys.readouterr()
    assert main(argv + ["--no-progress"]) == 2
    err = _err(capsys)
    assert len(err) == 1 and "the data changed since the interrupted run" in err[0] and "--overwrite" in err[0]
    assert (tmp / "o.partial" / "checkpoint.pt").exists()  # kept: restoring the data resumes
    assert main(argv + ["--no-progress", "train.lr=0.01"]) == 2
    err = _err(capsys)
    assert len(err) == 1 and "config changed" in err[0] and "train.lr" in err[0]
    assert main(argv + ["--no-progress", "--overwrite"]) == 0  # starts again on the new data
    assert not any("resuming" in ln for ln in _err(capsys))
    assert (tmp / "o" / "results.json").exists() and not (tmp / "o.partial").exists()


def test_second_writer_fails_at_once_naming_the_pid(setup, capsys):
    tmp, argv = setup
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from clpoison.utils.lock import OutputLock; "
                               f"l = OutputLock({str(tmp / 'o')!r}).acquire(); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True, env={**os.environ})
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.perf_counter()
        assert main(argv + ["--no-progress"]) == 2
        err = _err(capsys)
        assert time.perf_counter() - t0 < 5
        assert len(err) == 1 and f"pid {holder.pid}" in err[0], err
        assert not (tmp / "o.partial").exists() and not (tmp / "o").exists()
        x = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
        ds = ImageDataset(x, torch.tensor([0, 1]), ["a", "b"])
        with pytest.raises(ConfigError, match=f"pid {holder.pid}"):  # exports take the same lock
            export_poisoned(ImageSplits(ds, ds), None, tmp / "o")
    finally:
        holder.kill()  # kill -9: the kernel releases the lock
        holder.wait()
    with OutputLock(tmp / "o"):
        pass
    assert not lock_path(tmp / "o").exists()


def test_export_refuses_existing_folder_and_cleans_dead_partials(tmp_path):
    ds = ImageDataset(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.tensor([0, 1]), ["a", "b"])
    out = tmp_path / "p"
    stale = tmp_path / ".p.abc123.partial"  # what a killed export used to leave
    stale.mkdir()
    export_poisoned(ImageSplits(ds, ds), None, out)
    assert not stale.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["p"]
    with pytest.raises(ConfigError, match="overwrite=True"):
        export_poisoned(ImageSplits(ds, ds), None, out)
    export_poisoned(ImageSplits(ds, ds), None, out, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]


def test_non_finite_loss_names_the_step_and_keeps_the_last_good_checkpoint(setup, monkeypatch, capsys):
    tmp, argv = setup
    from clpoison.methods.simclr import SimCLR

    orig = SimCLR.loss

    def loss(self, batch):
        value, logs, aux = orig(self, batch)
        return (value * float("nan") if not self.training or _state["steps"] >= 2 else value), logs, aux

    _state = {"steps": 0}
    orig_step = trainer_mod.Trainer.train_step

    def step(self, batch):
        out = orig_step(self, batch)
        _state["steps"] += 1
        return out

    monkeypatch.setattr(SimCLR, "loss", loss)
    monkeypatch.setattr(trainer_mod.Trainer, "train_step", step)
    assert main(argv + ["--no-progress"]) == 2
    lines = _err(capsys)
    err = [ln for ln in lines if not ln.startswith("simclr epoch ")]  # the per-epoch log lines (no terminal)
    assert len(err) == 1 and "epoch 2, step 3" in err[0] and "train.lr" in err[0] and "epoch 1" in err[0], lines
    assert err[0].startswith("error: ") and len(lines) == 2  # epoch 1's line, then the one error line
    ckpt = read_checkpoint(tmp / "o.partial" / "checkpoint.pt")
    assert ckpt["epoch"] == 1 and all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert issubclass(TrainingDiverged, FloatingPointError)  # callers catching FloatingPointError still do


def test_failed_command_leaves_no_parent_folders(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("preset: simclr-small\n")
    assert main(["run", str(cfg), "data.train_limit=64", "eval.knn_k=100", "--no-progress",
                 "--out", str(tmp_path / "new" / "deeper" / "o")]) == 2
    assert "eval.knn_k" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]
