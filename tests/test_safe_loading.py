"""Safe loading: a file whose pickle would run code (create a marker file) is refused by every command that reads
it — `evaluate`, `scan`, resuming a `run`, the CIFAR reader (`datasets describe`, `run data.name=cifar`) — with
one ``error:`` line, exit 2, and the marker never created. Real checkpoints and CIFAR pickles still load."""

import json
import os
import pickle

import numpy as np
import pytest
import torch

from clpoison.cli import main
from clpoison.data.image_readers import load_dataset
from clpoison.engine.checkpoint import read_checkpoint
from clpoison.errors import DataError
from clpoison.experiments.config import build_config
from clpoison.experiments.fingerprint import run_fingerprint
from clpoison.experiments.tasks import task_for
from clpoison.utils.io import dumps_json


class _Evil:
    """Pickles as ``os.system('touch MARKER')``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _one_error_line(capsys, *needles):
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("error:"), err
    for n in needles:
        assert n in err[0], err[0]
    return err[0]


@pytest.fixture
def evil_checkpoint(tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil" / "checkpoint.pt"
    path.parent.mkdir()
    torch.save({"method": "simclr", "model": _Evil(marker), "config": {}}, path)
    return path, marker


@pytest.mark.parametrize("command", [["evaluate"], ["scan", "--data", "cifar10-subset", "--out", "s.csv"]])
def test_evaluate_and_scan_refuse_code_running_checkpoint(evil_checkpoint, capsys, command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path, marker = evil_checkpoint
    assert main([command[0], str(path.parent), *command[1:]]) == 2
    _one_error_line(capsys, str(path), "refused")
    assert not marker.exists() and not (tmp_path / "s.csv").exists()
    with pytest.raises(DataError, match="posix.system|os.system"):
        read_checkpoint(path)
    assert not marker.exists()


def test_resume_refuses_code_running_checkpoint(tmp_path, capsys):
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text("preset: simclr-small\n")
    over = ["data.train_limit=64", "data.test_limit=32", "model.width=4", "train.epochs=1", "train.batch_size=32",
            "eval.knn_k=5"]
    work = tmp_path / "out.partial"
    work.mkdir()
    # an interrupted run of exactly this config whose checkpoint was replaced by a crafted one
    cfg = build_config({"preset": "simclr-small"}, over)
    cfg.train.progress = False
    (work / "config.json").write_text(dumps_json(cfg.to_dict()))
    fp = run_fingerprint(task_for(cfg, torch.device("cpu")).load(), None)  # same data: the checkpoint gets read
    (work / "fingerprint.json").write_text(dumps_json(fp))
    marker = tmp_path / "PWNED"
    torch.save({"method": "simclr", "model": _Evil(marker), "rng": {}}, work / "checkpoint.pt")
    assert main(["run", str(cfg_path), *over, "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    _one_error_line(capsys, "checkpoint.pt", "refused")
    assert not marker.exists() and not (tmp_path / "out").exists()


def _cifar_dir(root, batch_payload=None):
    root.mkdir()
    r = np.random.default_rng(0)
    for name in ("data_batch_1", "test_batch"):
        d = {"data": r.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": [0, 1, 0, 1]}
        with open(root / name, "wb") as f:
            pickle.dump(batch_payload if (batch_payload is not None and name == "data_batch_1") else d, f, protocol=2)
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({"label_names": ["a", "b"]}, f, protocol=5)
    return root


def test_cifar_reader_refuses_code_running_pickle(tmp_path, capsys):
    marker = tmp_path / "PWNED"
    root = _cifar_dir(tmp_path / "cifar-10-batches-py", {"data": _Evil(marker), "labels": [0]})
    with pytest.raises(DataError, match="refused"):
        load_dataset("cifar", root)
    assert main(["datasets", "describe", "cifar", "--path", str(root)]) == 2
    _one_error_line(capsys, "data_batch_1", "refused")
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_reader_still_reads_numpy_pickles(tmp_path, protocol):
    root = tmp_path / "c"
    root.mkdir()
    x = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    for name in ("data_batch_1", "test_batch", "batches.meta"):
        obj = {"label_names": np.array(["x", "y"])} if name == "batches.meta" else {"data": x, "labels": np.array([0, 1])}
        with open(root / name, "wb") as f:
            pickle.dump(obj, f, protocol=protocol)
    s = load_dataset("cifar", root)
    assert s.train.images.shape == (2, 3, 32, 32) and s.class_names == ["x", "y"]
    assert json.dumps(s.describe())
