"""CLIP data readers on files the test writes: CSV/TSV, tar shards, bad input (one clear line, fail or skip+count)."""

import io
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from clpoison.data.captions.caption_readers import CaptionDataConfig, load_caption_splits, read_caption_csv
from clpoison.data.captions.caption_shards import read_caption_shards
from clpoison.errors import ConfigError, DataError


def png_bytes(value: int, size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "img").mkdir()
    for i in range(4):
        (tmp_path / "img" / f"{i}.png").write_bytes(png_bytes(40 * i))
    (tmp_path / "img" / "bad.png").write_bytes(b"not an image")
    return tmp_path


def test_csv_reader_groups_captions_and_resolves_relative_paths(folder):
    (folder / "pairs.csv").write_text(
        "filepath,title,label\nimg/0.png,a dark square,cat\nimg/1.png,\"grey, square\",dog\nimg/0.png,another caption,cat\n"
    )
    ds, skipped = read_caption_csv(folder / "pairs.csv", label_column="label", image_size=8)
    assert len(ds) == 2 and skipped == {}
    assert ds.captions == [["a dark square", "another caption"], ["grey, square"]]
    assert ds.images.dtype == torch.uint8 and ds.images.shape == (2, 3, 8, 8) and int(ds.images[1].max()) == 40
    assert ds.class_names == ["cat", "dog"] and ds.labels.tolist() == [0, 1]


def test_tsv_with_custom_columns(folder):
    (folder / "pairs.tsv").write_text("path\tcaption\nimg/2.png\ta, b and c\nimg/3.png\tlight\n")
    ds, _ = read_caption_csv(folder / "pairs.tsv", image_column="path", caption_column="caption", image_size=4)
    assert ds.captions == [["a, b and c"], ["light"]] and ds.images.shape[-1] == 4 and ds.labels is None


def test_missing_columns_name_file_and_header(folder):
    (folder / "pairs.csv").write_text("image,text\nimg/0.png,x\n")
    with pytest.raises(DataError, match=r"pairs.csv:1: missing column\(s\) \['filepath', 'title'\]"):
        read_caption_csv(folder / "pairs.csv")


@pytest.mark.parametrize(
    "row, reason, match",
    [
        ("img/9.png,missing file", "missing_image", r"pairs.csv:3: image .*9.png' does not exist"),
        ("img/bad.png,corrupt file", "corrupt_image", r"pairs.csv:3: image .*bad.png' is unreadable"),
        ("img/1.png,", "empty_caption", r"pairs.csv:3: empty caption"),
    ],
)
def test_bad_rows_fail_or_skip_and_count(folder, row, reason, match):
    (folder / "pairs.csv").write_text(f"filepath,title\nimg/0.png,ok\n{row}\n")
    with pytest.raises(DataError, match=match):
        read_caption_csv(folder / "pairs.csv", image_size=8)
    with pytest.warns(UserWarning, match="skipped"):
        ds, skipped = read_caption_csv(folder / "pairs.csv", image_size=8, on_error="skip")
    assert len(ds) == 1 and skipped == {reason: 1}


def test_non_utf8_row(folder):
    (folder / "pairs.csv").write_bytes(b"filepath,title\nimg/0.png,ok\nimg/1.png,caf\xe9 \xff\n")
    with pytest.raises(DataError, match=r"pairs.csv:3: text is not valid UTF-8"):
        read_caption_csv(folder / "pairs.csv", image_size=8)
    with pytest.warns(UserWarning):
        ds, skipped = read_caption_csv(folder / "pairs.csv", image_size=8, on_error="skip")
    assert len(ds) == 1 and skipped == {"non_utf8": 1}


def write_shard(path, samples):
    with tarfile.open(path, "w") as tf:
        for key, parts in samples:
            for ext, data in parts.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))


def test_tar_shards_streamed(tmp_path):
    write_shard(tmp_path / "shard-000000.tar", [("000", {"png": png_bytes(10), "txt": b"a cat\na small cat"}), ("001", {"jpg": png_bytes(20), "txt": "caf\u00e9".encode()})])
    write_shard(tmp_path / "shard-000001.tar", [("002", {"png": png_bytes(30), "txt": b"a dog", "json": b"{}"})])
    ds, skipped = read_caption_shards(tmp_path, image_size=8)
    assert ds.captions == [["a cat", "a small cat"], ["caf\u00e9"], ["a dog"]] and skipped == {}
    assert ds.images[:, 0, 0, 0].tolist() == [10, 20, 30]
    ds2, _ = read_caption_shards(str(tmp_path / "shard-*.tar"), image_size=8)
    assert len(ds2) == 3


def test_tar_bad_samples(tmp_path):
    write_shard(tmp_path / "s.tar", [("a", {"png": png_bytes(1), "txt": b"ok"}), ("b", {"png": b"junk", "txt": b"x"}),
                                      ("c", {"txt": b"no image"}), ("d", {"png": png_bytes(2), "txt": b"\xff\xfe"})])
    with pytest.raises(DataError, match=r"s.tar:b.png: image is unreadable"):
        read_caption_shards(tmp_path / "s.tar", image_size=8)
    with pytest.warns(UserWarning):
        ds, skipped = read_caption_shards(tmp_path / "s.tar", image_size=8, on_error="skip")
    assert len(ds) == 1 and skipped == {"corrupt_image": 1, "missing_image": 1, "non_utf8": 1}
    with pytest.raises(DataError, match="does not exist"):
        read_caption_shards(tmp_path / "nope.tar")


def test_csv_source_holdout_and_config_validation(folder):
    rows = "\n".join(f"img/{i % 4}.png,caption {i}" for i in range(4))
    (folder / "pairs.csv").write_text("filepath,title\n" + rows + "\n")
    splits = load_caption_splits("captions-csv", str(folder / "pairs.csv"), CaptionDataConfig(test_fraction=0.25), 8, seed=0)
    assert len(splits.train) == 3 and len(splits.test) == 1
    with pytest.raises(ConfigError, match="on_error"):
        CaptionDataConfig(on_error="ignore")


def test_generated_cifar_captions():
    splits = load_caption_splits("cifar10-subset", None, CaptionDataConfig(), 32, seed=0)
    assert len(splits.train) == 5438 and splits.test.labels is not None
    assert "stand-in" in splits.source["captions"]
    again = load_caption_splits("cifar10-subset", None, CaptionDataConfig(), 32, seed=0)
    assert again.train.captions[:50] == splits.train.captions[:50]
