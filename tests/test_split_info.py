"""What every split says of itself (data/split_info.py): how it is held, its resident bytes, its fingerprints and
the poison files it reads — asked once by the ``--dry-run`` plan and the run fingerprint, which no longer branch on
streaming. The figures were recorded with the code before the change (commit 6d3c9ca) on the same tiny data: the
fingerprints are unchanged; so is the plan, except where the old branch was wrong (noted at each assertion)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import clpoison.experiments.plan as plan_module
from clpoison.poisoned.manifest import fingerprint
from clpoison.data.captions import CaptionDataset
from clpoison.data.datasets import ImageDataset
from clpoison.data.image_readers import load_image_folder
from clpoison.data.shards.shard_set import StreamingCaptionSet
from clpoison.data.shards.shard_edits import write_poison_shards
from clpoison.experiments.config import build_config
from clpoison.experiments.fingerprint import run_fingerprint
from clpoison.experiments.plan import format_plan, plan_experiment
from clpoison.utils.io import sha256_file

from test_shard_stream import streamed_clip_overrides, write_shards


def old_file_fingerprint(ds) -> str:
    """The run fingerprint of a split read from files, as ``experiments/fingerprint.py`` computed it before."""
    h = hashlib.sha256(f"{type(ds).__name__}:{len(ds)}:{list(getattr(ds, 'class_names', []) or [])}".encode())
    for item in getattr(ds, "items", []) or []:
        path, label = item[0], item[1]
        try:
            st = path.stat()
            h.update(f"{path}:{label}:{st.st_size}:{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{path}:{label}:missing\n".encode())
    return h.hexdigest()


def tiny_image() -> ImageDataset:
    images = torch.arange(4 * 3 * 5 * 6, dtype=torch.int64).remainder(251).to(torch.uint8).view(4, 3, 5, 6)
    return ImageDataset(images, torch.tensor([0, 1, 1, 0]), ["a", "b"], "tiny")


def tiny_captions() -> CaptionDataset:
    img = tiny_image()
    return CaptionDataset(img.images.clone(), [["a photo"], ["two", "captions"], ["x"], ["y"]], ["a", "b"],
                          img.labels.clone(), "tinycap", torch.tensor([[5, 6], [4, 6], [5, 5], [5, 6]]))


def write_folder(root: Path) -> None:
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 2)):
        for c in ("cat", "dog"):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("split_info")
    write_shards(d / "train", shards=3, per=8)
    write_shards(d / "test", shards=1, per=8)
    write_folder(d / "folder")
    return d


# recorded before the change: poisoned.manifest.fingerprint (then attacks.manifest) of tiny_image() / tiny_captions()
IMAGE_SHA = "bd270ff7e54ba7e026976257565b1b5b6bef00d9b5140bbb6096a3e825756115"
CAPTIONS_SHA = "cb0f8e0a277c7ad6f4461c677f2c66b1591d49defe24368ad4dfa3dd92067571"


@pytest.mark.parametrize("make,sha", [(tiny_image, IMAGE_SHA), (tiny_captions, CAPTIONS_SHA)])
def test_a_split_in_memory_answers_from_its_tensor(make, sha):
    ds = make()
    assert ds.storage() == {"streamed": False, "held": "held in memory"}
    assert ds.resident_bytes == 4 * 3 * 5 * 6  # uint8
    assert ds.content_fingerprint() == ds.resume_fingerprint() == fingerprint(ds) == sha
    assert ds.poison_files() == {}
    changed = make()
    changed.images[0, 0, 0, 0] += 1
    assert changed.resume_fingerprint() != sha


def test_a_shard_set_answers_from_its_files(data, tmp_path):
    clean = StreamingCaptionSet(data / "train", 16)
    assert clean.storage() == {"streamed": True, "shards": 3, "held": "streamed from 3 shards"}
    assert clean.resident_bytes == 0 and len(clean) == 24
    assert clean.resume_fingerprint() == old_file_fingerprint(clean)
    assert clean.poison_files() == {}
    written = write_poison_shards(tmp_path / "poison", torch.zeros(2, 3, 16, 16, dtype=torch.uint8),
                                  [["poison one"], ["poison two"]])
    files = [tmp_path / "poison" / w["file"] for w in written]
    poisoned = clean.with_shards(files, [w["sha256"] for w in written], sum(w["samples"] for w in written))
    assert poisoned.storage()["shards"] == 3 + len(files)
    assert poisoned.resume_fingerprint() == old_file_fingerprint(poisoned) != clean.resume_fingerprint()
    assert poisoned.poison_files() == {Path(f).name: sha256_file(f) for f in files}
    assert poisoned.content_fingerprint() != clean.content_fingerprint()


def test_a_streamed_image_folder_answers_from_its_files(data):
    splits = load_image_folder(data / "folder", image_size=16, max_resident_bytes=0)
    for ds, n in ((splits.train, 12), (splits.test, 4)):
        assert ds.storage() == {"streamed": True, "files": n, "held": f"streamed from {n} image files"}
        assert ds.resident_bytes == 0 and ds.poison_files() == {}
        assert ds.resume_fingerprint() == ds.content_fingerprint() == old_file_fingerprint(ds)
    held = load_image_folder(data / "folder", image_size=16)
    assert held.train.storage()["streamed"] is False and held.train.resident_bytes == 12 * 3 * 16 * 16


def _old_fingerprint(splits) -> dict:
    """``run_fingerprint`` before the change: the manifest's fingerprint of a tensor split, else by file."""
    def one(ds):
        return fingerprint(ds) if isinstance(getattr(ds, "images", None), torch.Tensor) else old_file_fingerprint(ds)
    return {"data": {"train": one(splits.train), "test": one(splits.test)}, "poisoned": None}


SIMCLR = ["model.width=4", "method.params.proj_dim=16", "eval.knn_k=3"]
FOLDER = ["data.name=imagefolder", "data.image_size=16", "train.batch_size=4", "data.stream_workers=0", *SIMCLR]
# case: (preset, overrides, recorded plan["data"] less "held", resident bytes, the data line of format_plan)
CASES = {
    "cifar-subset": ("simclr-small", ["data.train_limit=64", "data.test_limit=16", "train.batch_size=16", *SIMCLR],
                     {"name": "cifar10-subset", "train": 64, "trained": 64, "test": 16, "streamed": False}, 245760,
                     "data: cifar10-subset: 64 train / 16 test, held in memory"),
    "folder-in-memory": ("simclr-small", FOLDER,
                         {"name": "imagefolder", "train": 12, "trained": 12, "test": 4, "streamed": False}, 12288,
                         "data: imagefolder: 12 train / 4 test, held in memory"),
    "shards-in-memory": ("clip-small", ["train.batch_size=8", "data.captions.stream=false"],
                         {"name": "captions-tar", "train": 24, "trained": 24, "test": 8, "streamed": False}, 24576,
                         "data: captions-tar: 24 train / 8 test, held in memory"),
    # recorded before: resident 0 — the test shards (8 × 3×16×16) are held in memory too, now counted
    "shards-streamed": ("clip-small", ["train.batch_size=8"],
                        {"name": "captions-tar", "train": 24, "trained": 24, "test": 8, "streamed": True, "shards": 3},
                        0 + 8 * 3 * 16 * 16, "data: captions-tar: 24 train / 8 test, streamed from 3 shards"),
    # recorded before: {"streamed": False}, "held in memory", resident 0 — the old branch missed a streamed folder
    "folder-streamed": ("simclr-small", [*FOLDER, "data.max_resident_gb=0.0"],
                        {"name": "imagefolder", "train": 12, "trained": 12, "test": 4, "streamed": True, "files": 12},
                        0, "data: imagefolder: 12 train / 4 test, streamed from 12 image files"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_plan_and_fingerprint_ask_the_split(case, data, monkeypatch):
    preset, extra, want, resident, line = CASES[case]
    over = streamed_clip_overrides(data, extra) if preset == "clip-small" else extra
    if case.startswith("folder"):
        over = [f"data.path={data / 'folder'}", *over]
    monkeypatch.setattr(plan_module, "_mb", lambda n: n)  # bytes, not rounded MB: the tiny data would round to 0
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RUN_ID", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(k, raising=False)
    plan = plan_experiment(build_config({"preset": preset}, over), measure_steps=0)
    assert {k: v for k, v in plan["data"].items() if k != "held"} == want
    assert plan["memory_mb"]["resident_data_uint8"] == resident
    assert format_plan(plan).split("# plan\n")[1].splitlines()[0] == line

    from clpoison.experiments.tasks import task_for

    splits = task_for(build_config({"preset": preset}, over), torch.device("cpu"), None, lambda s: None).load()
    assert run_fingerprint(splits, None, splits.train) == _old_fingerprint(splits)


def test_an_image_split_gives_its_batches_and_its_images_by_slice(data):
    """The image task and feature extraction ask the split: resident or decoded from files, the same batches and
    the same features."""
    from clpoison.data.image_stream import StreamedImageBatches
    from clpoison.data.loader import ResidentBatches
    from clpoison.eval.features import extract_features

    streamed = load_image_folder(data / "folder", image_size=16, max_resident_bytes=0).train
    held = load_image_folder(data / "folder", image_size=16).train
    cpu = torch.device("cpu")
    a, b = held.batch_source(4, cpu, seed=3, workers=2), streamed.batch_source(4, cpu, seed=3, workers=0)
    assert type(a) is ResidentBatches and type(b) is StreamedImageBatches and b.workers == 0
    for (ia, xa, _), (ib, xb, _) in zip(a.epoch(1), b.epoch(1)):
        assert torch.equal(ia, ib) and torch.equal(xa, xb)
    assert streamed.images.shape == held.images.shape == (12, 3, 16, 16)
    assert torch.equal(streamed.images[2:7], held.images[2:7]) and torch.equal(streamed.images[[5, 1]], held.images[[5, 1]])
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    assert torch.equal(extract_features(net, streamed.images, batch_size=5), extract_features(net, held.images, batch_size=5))
