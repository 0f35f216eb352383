"""`clpoison verify DIR` checks an export against its manifest and SHA256SUMS; `run` verifies an export before
using it; a reader's class order (CSV readers sort class names) is not a false alarm."""

import json

import numpy as np
import pytest
import torch

from clpoison.poisoned.manifest import build_manifest, verify
from clpoison.poisoned.verify import write_sums
from clpoison.cli import main
from clpoison.data.datasets import ImageDataset, ImageSplits


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    root = tmp_path_factory.mktemp("verify")
    r = np.random.default_rng(0)
    np.savez(root / "clean.npz", x_train=r.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8),
             y_train=np.arange(40) % 2, x_test=r.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8),
             y_test=np.arange(8) % 2, class_names=np.array(["zebra", "apple"]))
    out = root / "p"
    assert main(["poison", "ssl-backdoor", "--data", str(root / "clean.npz"), "--out", str(out), "target=zebra",
                 "poison_count=6", "trigger.size=4", "--no-progress"]) == 0
    return out


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def _verify(path, capsys):
    capsys.readouterr()
    rc = main(["verify", str(path)])
    c = capsys.readouterr()
    return rc, [ln for ln in c.err.splitlines() if ln.strip()], c.out


def test_verify_accepts_a_fresh_export(export, capsys):
    rc, err, out = _verify(export, capsys)
    assert rc == 0 and not err
    s = json.loads(out)
    assert s["files"] == 4 and s["poisoned"] == 6  # data.npz, test_triggered.npz, manifest.json, trigger.png
    assert s["poisoned"] == 6 and s["trigger"] and s["data"]


def _tamper_pixels(d):
    with np.load(d / "data.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["x_train"][0, 0, 0, 0] ^= 1
    np.savez(d / "data.npz", **arrays)
    write_sums(d)  # an attacker who also rewrites SHA256SUMS is still caught by the manifest fingerprint


def _tamper_indices(d):
    m = json.loads((d / "manifest.json").read_text())
    m["poisoned_indices"] = [10 ** 6]
    (d / "manifest.json").write_text(json.dumps(m))
    write_sums(d)


@pytest.mark.parametrize("tamper, needle", [
    (lambda d: (d / "trigger.png").write_bytes((d / "trigger.png").read_bytes() + b"x"), "trigger.png"),
    (lambda d: (d / "extra.txt").write_text("x"), "extra.txt"),
    (lambda d: (d / "data.npz").unlink(), "data.npz"),
    (lambda d: (d / "SHA256SUMS").unlink(), "SHA256SUMS"),
    (lambda d: (d / "manifest.json").write_text("{nope"), "manifest.json"),
    (_tamper_pixels, "fingerprint"),
    (_tamper_indices, "poisoned_indices"),
], ids=["trigger-bytes", "added-file", "missing-file", "no-sums", "manifest-not-json", "pixels", "indices"])
def test_verify_catches_tampering(export, tmp_path, capsys, tamper, needle):
    d = _copy(export, tmp_path / "t")
    tamper(d)
    rc, err, _ = _verify(d, capsys)
    assert rc == 2 and len(err) == 1 and err[0].startswith("error:") and needle in err[0], err


def test_run_verifies_an_export_before_using_it(export, tmp_path, capsys):
    d = _copy(export, tmp_path / "t")
    _tamper_pixels(d)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("preset: simclr-small\n")
    rc = main(["run", str(cfg), "data.name=npz", f"data.path={d / 'data.npz'}", "model.width=4", "train.epochs=1",
               "train.batch_size=16", "eval.knn_k=5", "--no-progress", "--out", str(tmp_path / "o")])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2 and len(err) == 1 and "fingerprint" in err[0], err
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.partial").exists()


def test_class_order_of_the_reader_is_no_false_alarm():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (6, 3, 4, 4), dtype=torch.uint8, generator=g)
    ds = ImageDataset(x, torch.tensor([0, 1, 0, 1, 0, 1]), ["zebra", "apple"])  # not alphabetical
    m = build_manifest(attack="a", attack_version="1", params={}, seed=0, source=ImageSplits(ds, ds),
                       output=ImageSplits(ds, ds))
    # what a CSV reader gives back: the same data with sorted class names and renumbered labels
    back = ImageDataset(x, torch.tensor([1, 0, 1, 0, 1, 0]), ["apple", "zebra"])
    verify(m, source=ImageSplits(back, back), output=ImageSplits(back, back))
    changed = ImageDataset(x, torch.tensor([0, 0, 1, 0, 1, 0]), ["apple", "zebra"])
    with pytest.raises(Exception, match="fingerprint"):
        verify(m, output=ImageSplits(changed, changed))


def test_padded_canvas_export_keeps_its_sizes_and_verifies(export, tmp_path, capsys):
    """CorruptEncoder adds composites larger than the clean images: the NPZ keeps each image's valid size."""
    out = tmp_path / "ce"
    assert main(["poison", "corruptencoder", "--data", str(export.parent / "clean.npz"), "--out", str(out),
                 "target=zebra", "poison_count=3", "trigger.size=4", "--no-progress"]) == 0
    with np.load(out / "data.npz") as z:
        assert "train_sizes" in z.files and z["train_sizes"].shape == (43, 2)
    rc, err, _ = _verify(out, capsys)
    assert rc == 0 and not err
