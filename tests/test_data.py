"""Loaders round-trip files the test writes; bad files give one clear error."""

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from clpoison.data import load_dataset
from clpoison.data.datasets import ImageDataset
from clpoison.data.image_readers import load_cifar10_subset
from clpoison.data.loader import ResidentBatches, epoch_permutation
from clpoison.errors import ConfigError, DataError


def _arrays(n=6, m=4, seed=0):
    r = np.random.default_rng(seed)
    return (r.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), r.integers(0, 3, n),
            r.integers(0, 256, (m, 32, 32, 3), dtype=np.uint8), r.integers(0, 3, m))


def test_bundled_subset():
    s = load_cifar10_subset()
    assert len(s.train) == 5438 and len(s.test) == 1017
    assert s.train.images.dtype == torch.uint8 and s.train.images.shape[1:] == (3, 32, 32)
    assert s.class_names[0] == "airplane" and len(s.class_names) == 10
    assert s.test.labels[:4].tolist() == [3, 8, 8, 0]  # the official test_batch order


def test_npz_roundtrip(tmp_path):
    xtr, ytr, xte, yte = _arrays()
    np.savez(tmp_path / "d.npz", x_train=xtr, y_train=ytr, x_test=xte, y_test=yte, class_names=np.array(["a", "b", "c"]))
    s = load_dataset("npz", tmp_path / "d.npz")
    assert torch.equal(s.train.images, torch.from_numpy(xtr).permute(0, 3, 1, 2))
    assert s.train.labels.tolist() == ytr.tolist() and s.class_names == ["a", "b", "c"]


def test_cifar_dir_roundtrip(tmp_path):
    xtr, ytr, xte, yte = _arrays()
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for i, (x, y) in enumerate([(xtr[:3], ytr[:3]), (xtr[3:], ytr[3:])]):
        with open(root / f"data_batch_{i + 1}", "wb") as f:
            pickle.dump({"data": x.transpose(0, 3, 1, 2).reshape(len(x), -1), "labels": y.tolist()}, f)
    with open(root / "test_batch", "wb") as f:
        pickle.dump({"data": xte.transpose(0, 3, 1, 2).reshape(len(xte), -1), "labels": yte.tolist()}, f)
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({"label_names": ["a", "b", "c"]}, f)
    s = load_dataset("cifar", root)
    assert torch.equal(s.train.images, torch.from_numpy(xtr).permute(0, 3, 1, 2))
    assert torch.equal(s.test.images, torch.from_numpy(xte).permute(0, 3, 1, 2))
    assert s.class_names == ["a", "b", "c"]


def test_imagefolder_roundtrip(tmp_path):
    xtr, ytr, xte, yte = _arrays()
    for split, x, y in (("train", xtr, ytr), ("test", xte, yte)):
        for i, (img, lab) in enumerate(zip(x, y)):
            d = tmp_path / split / f"class{lab}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(d / f"{i}.png")
    for c in range(3):  # every class exists in both splits
        (tmp_path / "train" / f"class{c}").mkdir(parents=True, exist_ok=True)
        (tmp_path / "test" / f"class{c}").mkdir(parents=True, exist_ok=True)
    s = load_dataset("imagefolder", tmp_path, image_size=32)
    assert len(s.train) == len(xtr) and s.class_names == ["class0", "class1", "class2"]
    got = sorted(map(bytes, s.train.images.permute(0, 2, 3, 1).numpy()))
    assert got == sorted(map(bytes, xtr))  # PNG is lossless: exact pixels


def test_corrupt_image_names_the_file(tmp_path):
    (tmp_path / "cls").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "cls" / "ok.png")
    (tmp_path / "cls" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="bad.png"):
        load_dataset("imagefolder", tmp_path, image_size=8)


def test_bad_npz_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("npz", tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"garbage")
    with pytest.raises(DataError, match="cannot be read"):
        load_dataset("npz", tmp_path / "junk.npz")
    xtr, ytr, xte, yte = _arrays()
    np.savez(tmp_path / "noy.npz", x_train=xtr, x_test=xte, y_test=yte)
    with pytest.raises(DataError, match="y_train"):
        load_dataset("npz", tmp_path / "noy.npz")
    np.savez(tmp_path / "mismatch.npz", x_train=xtr, y_train=ytr[:-1], x_test=xte, y_test=yte)
    with pytest.raises(DataError, match="must match"):
        load_dataset("npz", tmp_path / "mismatch.npz")


def test_label_count_mismatch_and_range():
    with pytest.raises(DataError, match="labels"):
        ImageDataset(torch.zeros(3, 3, 4, 4, dtype=torch.uint8), torch.zeros(2), ["a"])
    with pytest.raises(DataError, match="must lie in"):
        ImageDataset(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.tensor([0, 5]), ["a", "b"])


def test_resident_batches_cover_epoch_and_are_seeded():
    ds = ImageDataset(torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 3, 2, 2).contiguous(), torch.zeros(10), ["a"])
    rb = ResidentBatches(ds, 3, torch.device("cpu"), seed=4)
    assert len(rb) == 3
    idx = torch.cat([i for i, _, _ in rb.epoch(0)])
    assert len(set(idx.tolist())) == 9
    assert torch.equal(idx, epoch_permutation(10, 4, 0)[:9])
    assert not torch.equal(epoch_permutation(10, 4, 0), epoch_permutation(10, 4, 1))
    with pytest.raises(ConfigError, match="larger than the dataset"):
        ResidentBatches(ds, 11, torch.device("cpu"))


@pytest.mark.slow
def test_streaming_imagefolder_trains_end_to_end(tmp_path):
    """A tree over data.max_resident_gb is not held in memory: batches are decoded from disk, in 2 loader workers."""
    from clpoison.data.image_readers import StreamingImageFolder
    from clpoison.data.image_stream import StreamedImageBatches
    from clpoison.defenses import DEFENSES
    from clpoison.experiments.config import build_config
    from clpoison.experiments.runner import run_experiment
    from clpoison.experiments.tasks import task_for

    r = np.random.default_rng(0)
    for split, n in (("train", 64), ("test", 16)):
        for i in range(n):
            d = tmp_path / "data" / split / f"c{i % 2}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(r.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(d / f"{i}.png")
    over = [f"data.path={tmp_path / 'data'}", "data.name=imagefolder", "data.image_size=16", "data.max_resident_gb=0.0",
            "augment.out_size=16", "model.width=4", "train.epochs=1", "train.batch_size=32", "train.progress=false",
            "eval.knn_k=5", "method.params.proj_dim=8", "data.stream_workers=2"]
    cfg = build_config({"preset": "simclr-small"}, over)
    task = task_for(cfg, torch.device("cpu"))
    train = task.load().train
    assert isinstance(train, StreamingImageFolder)
    source = task.batches(task.build_method(train), train, DEFENSES.build("none", {})).source
    assert isinstance(source, StreamedImageBatches) and source.workers == 2
    res = run_experiment(cfg, tmp_path / "run")
    assert 0 <= res["metrics"]["knn_top1"] <= 1 and res["data"]["train_images"] == 64
