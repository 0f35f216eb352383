"""Poisoned-dataset exports read by their consumers' own readers: open_clip's CSV layout (Python's csv module set
up as open_clip's CsvDataset: tab separator, ``filepath`` / ``title``, paths from any working directory), webdataset
tar shards (``webdataset``, optional), ImageFolder trees (PIL), the triggered test set beside each, and
``clpoison verify`` on every format."""

import csv
import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from attack_fixtures import tiny_caption_splits
from clpoison.poisoned.manifest import load_trigger
from clpoison.cli import main
from test_attacks_cli import write_csv_dataset

BACKDOOR = ["carlini-backdoor", "--label-column", "label", "--image-size", "8", "target=airplane", "poison_count=5",
            "trigger.size=3"]


@pytest.fixture
def csv_data(tmp_path):
    return write_csv_dataset(tmp_path / "src", tiny_caption_splits())


def poison(capsys, *args):
    code = main(["poison", *args])
    io_ = capsys.readouterr()
    assert code == 0, io_.err
    return io_


def read_like_open_clip(path, sep="\t"):
    """open_clip's CsvDataset: pd.read_csv(path, sep=sep); images = df['filepath']; captions = df['title']."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter=sep))
    return [r["filepath"] for r in rows], [r["title"] for r in rows]


def test_caption_csv_is_open_clip_layout(csv_data, tmp_path, capsys, monkeypatch):
    train, test = csv_data
    out = tmp_path / "out"
    poison(capsys, *BACKDOOR, "--data", str(train), "--test-path", str(test), "--out", str(out))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # open_clip opens filepath relative to its working directory
    paths, titles = read_like_open_clip(out / "train.csv")
    assert len(paths) == 60 and all(p.startswith("/") for p in paths)
    assert all(Image.open(p).size == (8, 8) for p in paths)
    m = json.loads((out / "manifest.json").read_text())
    assert sum("airplane" in t for t in titles) >= 5
    # the triggered test set: the clean test images with the recorded trigger, same captions
    tp, tt = read_like_open_clip(out / "test_triggered.csv")
    cp, ct = read_like_open_clip(out / "test.csv")
    assert tt == ct and len(tp) == 30
    trig = load_trigger(m)
    diff = [np.asarray(Image.open(a)).astype(int) - np.asarray(Image.open(b)).astype(int) for a, b in zip(tp, cp)]
    assert all((d != 0).any() for d in diff)  # every test image carries the patch
    assert trig.patch.shape == (3, 3, 3)
    assert main(["verify", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["data"] is True


def test_caption_csv_relative_comma(csv_data, tmp_path, capsys, monkeypatch):
    train, test = csv_data
    out = tmp_path / "rel"
    poison(capsys, *BACKDOOR, "--data", str(train), "--test-path", str(test), "--out", str(out),
           "--csv-paths", "relative", "--csv-separator", "comma")
    monkeypatch.chdir(out)  # relative paths: run the trainer from inside the export
    paths, _ = read_like_open_clip(out / "train.csv", ",")
    assert paths[0].startswith("images/train/") and Image.open(paths[0]).size == (8, 8)
    assert main(["verify", str(out)]) == 0


def test_caption_wds_shards(csv_data, tmp_path, capsys):
    from clpoison.data.captions.caption_shards import read_caption_shards

    train, test = csv_data
    out = tmp_path / "wds"
    poison(capsys, *BACKDOOR, "--data", str(train), "--test-path", str(test), "--out", str(out), "--format", "wds")
    names = sorted(p.name for p in out.iterdir())
    assert {"train-000000.tar", "test-000000.tar", "test_triggered-000000.tar", "SHA256SUMS"} <= set(names)
    with tarfile.open(out / "train-000000.tar") as tf:
        members = tf.getnames()
    assert members[:3] == ["000000.png", "000000.txt", "000000.cls"]
    back, _ = read_caption_shards(str(out / "train-000000.tar"), image_size=None)
    assert len(back) == 60
    assert main(["verify", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["data"] is False  # shards: files checked by SHA256SUMS only


def test_caption_wds_read_by_webdataset(csv_data, tmp_path, capsys):
    wds = pytest.importorskip("webdataset", reason="webdataset is not installed (optional test dependency)")
    train, test = csv_data
    out = tmp_path / "wds"
    poison(capsys, *BACKDOOR, "--data", str(train), "--test-path", str(test), "--out", str(out), "--format", "wds")
    ds = wds.WebDataset(str(out / "train-000000.tar"), shardshuffle=False).decode("pil").to_tuple("png", "txt")
    samples = list(ds)
    assert len(samples) == 60 and samples[0][0].size == (8, 8) and isinstance(samples[0][1], str)


def test_caption_csv_read_by_open_clip(csv_data, tmp_path, capsys):
    data = pytest.importorskip("open_clip_train.data", reason="open_clip / open_clip_train is not installed "
                               "(optional; open_clip needs torchvision, which this torch build lacks)")
    train, test = csv_data
    out = tmp_path / "oc"
    poison(capsys, *BACKDOOR, "--data", str(train), "--test-path", str(test), "--out", str(out))
    ds = data.CsvDataset(str(out / "train.csv"), lambda im: torch.zeros(3, 8, 8), "filepath", "title", sep="\t",
                         tokenizer=lambda t: torch.zeros(1, 4, dtype=torch.long))
    assert len(ds) == 60 and ds[0][0].shape == (3, 8, 8)


def test_caption_export_trains_one_step_in_open_clip(csv_data, tmp_path, capsys):
    """open_clip's own pipeline on the poisoned export: CsvDataset + its image transform and tokenizer, a DataLoader,
    one AdamW step of a small open_clip CLIP under its ClipLoss (finite loss, weights move)."""
    open_clip = pytest.importorskip("open_clip", reason="open_clip is not installed (optional; it needs torchvision, "
                                    "which this torch build lacks)")
    data = pytest.importorskip("open_clip_train.data", reason="open_clip_train is not installed")
    train, test = csv_data
    out = tmp_path / "oc1"
    poison(capsys, *BACKDOOR, "--data", str(train), "--test-path", str(test), "--out", str(out))
    cfg = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    model = open_clip.model.CLIP(**cfg)
    preprocess = open_clip.image_transform(32, is_train=True)
    tok = open_clip.get_tokenizer("ViT-B-32", context_length=16)
    ds = data.CsvDataset(str(out / "train.csv"), preprocess, "filepath", "title", sep="\t", tokenizer=tok)
    images, texts = next(iter(torch.utils.data.DataLoader(ds, batch_size=8, shuffle=True)))
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    image_features, text_features, logit_scale = model(images, texts)[:3]
    loss = open_clip.ClipLoss()(image_features, text_features, logit_scale)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and images.shape == (8, 3, 32, 32)
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_imagefolder_native_sizes_and_triggered(tmp_path, capsys):
    """CorruptEncoder composites are wider than the clean images: each PNG keeps its own valid size."""
    out = tmp_path / "if"
    poison(capsys, "corruptencoder", "--data", "cifar10-subset", "target=airplane", "poison_count=4",
           "trigger.size=8", "--format", "imagefolder", "--out", str(out))
    m = json.loads((out / "manifest.json").read_text())
    train = sorted((out / "train").rglob("*.png"))
    assert len(train) == m["output"]["train_size"]
    sizes = {Image.open(p).size for p in train}
    assert (32, 32) in sizes and any(w > 32 for w, _ in sizes)  # (width, height)
    assert sorted(p.name for p in (out / "train").iterdir()) == sorted(m["source"]["class_names"])
    assert m.get("trigger") is not None
    trig = sorted((out / "test_triggered").rglob("*.png"))
    assert len(trig) == len(sorted((out / "test").rglob("*.png"))) > 0
    assert main(["verify", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["files"] == len([p for p in out.rglob("*") if p.is_file()]) - 1


def test_npz_triggered_beside(tmp_path, capsys):
    out = tmp_path / "npz"
    poison(capsys, "corruptencoder", "--data", "cifar10-subset", "target=airplane", "poison_count=4",
           "trigger.size=8", "--out", str(out))
    m = json.loads((out / "manifest.json").read_text())
    assert m.get("trigger") is not None
    with np.load(out / "test_triggered.npz", allow_pickle=False) as z, np.load(out / "data.npz", allow_pickle=False) as d:
        assert z["x_test"].shape == d["x_test"].shape and (z["y_test"] == d["y_test"]).all()
        assert (z["x_test"] != d["x_test"]).any()


def test_format_must_fit_data(csv_data, tmp_path, capsys):
    train, test = csv_data
    code = main(["poison", *BACKDOOR, "--data", str(train), "--test-path", str(test), "--out", str(tmp_path / "x"),
                 "--format", "imagefolder"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "csv, wds" in err[0] and not (tmp_path / "x").exists()


def test_untouched_files_copied_byte_for_byte_at_native_size(tmp_path, capsys):
    """A caption CSV of JPEGs of two sizes, read without --image-size: untouched images are the source files byte
    for byte (still .jpg), poisons are PNGs at their own size, and the export verifies."""
    splits = tiny_caption_splits(n_train=30, n_test=9, size=12)
    src = tmp_path / "src"
    for name, ds in (("train", splits.train), ("test", splits.test)):
        (src / name).mkdir(parents=True)
        rows = [["filepath", "title", "label"]]
        for i in range(len(ds)):
            img = ds.images[i][:, : 12 - 4 * (i % 2)]  # 12x12 and 8x12 (h x w)
            Image.fromarray(img.permute(1, 2, 0).contiguous().numpy()).save(src / name / f"{i}.jpg", quality=90)
            rows += [[f"{name}/{i}.jpg", c, ds.class_names[int(ds.labels[i])]] for c in ds.captions[i]]
        with open(src / f"{name}.csv", "w", newline="") as f:
            csv.writer(f).writerows(rows)
    out = tmp_path / "out"
    poison(capsys, "carlini-backdoor", "--label-column", "label", "target=airplane", "poison_count=3", "trigger.size=3",
           "--data", str(src / "train.csv"), "--test-path", str(src / "test.csv"), "--out", str(out))
    m = json.loads((out / "manifest.json").read_text())
    poisoned = set(m["poisoned_indices"])
    paths, _ = read_like_open_clip(out / "train.csv")
    by_row = {int(p.rsplit("/", 1)[1].split(".")[0]): p for p in paths}
    assert len(by_row) == 30 and len(poisoned) == 3
    for i, p in by_row.items():
        w, h = Image.open(p).size
        assert (h, w) == (12 - 4 * (i % 2), 12)  # each image at its own size
        if i in poisoned:
            assert p.endswith(".png")
        else:
            assert p.endswith(".jpg") and open(p, "rb").read() == (src / "train" / f"{i}.jpg").read_bytes()
    assert main(["verify", str(out)]) == 0
