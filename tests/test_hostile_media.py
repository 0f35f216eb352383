"""Media readers refuse hostile input (issue 29): decompression bombs and oversized images are one line naming the
file (skipped and counted under ``on_error: skip``), a tar shard cut at a member boundary fails or is counted,
a canvas that would be mostly padding is refused, and a bad image decoded in a loader worker is one line."""

import io
import tarfile
import warnings

import pytest
import torch
from PIL import Image

from clpoison.data.captions.caption_shards import read_caption_shards
from clpoison.data.datasets import stack_on_canvas
from clpoison.data.image_readers import MAX_PIXELS_ENV, StreamingImageFolder, decode_image
from clpoison.data.image_stream import StreamedImageBatches
from clpoison.data.shards.shard_stream import shard_counts
from clpoison.errors import DataError


def _png(h, w, mode="RGB"):
    buf = io.BytesIO()
    Image.new(mode, (w, h)).save(buf, format="PNG")
    return buf.getvalue()


def _shard(path, n, cut_at_sample=None):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for i in range(n):
            for ext, data in (("png", _png(8, 8)), ("txt", f"photo {i}".encode())):
                info = tarfile.TarInfo(f"{i:04d}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    if cut_at_sample is not None:
        with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
            raw = raw[: tf.getmembers()[2 * cut_at_sample].offset]
    path.write_bytes(raw)
    return path


def test_bomb_and_oversized_images_are_one_line(tmp_path, monkeypatch):
    (tmp_path / "bomb.png").write_bytes(_png(20000, 20000, "1"))
    with pytest.raises(DataError, match="bomb.png' is a decompression bomb"):
        decode_image(tmp_path / "bomb.png", 32)
    (tmp_path / "big.png").write_bytes(_png(40, 40))
    monkeypatch.setenv(MAX_PIXELS_ENV, "1000")
    with pytest.raises(DataError, match="big.png' is 40 x 40 pixels, beyond the bound of 1,000"):
        decode_image(tmp_path / "big.png", 32)


def test_truncated_shard_fails_or_is_counted(tmp_path):
    whole, cut = _shard(tmp_path / "whole.tar", 6), _shard(tmp_path / "cut.tar", 6, cut_at_sample=3)
    assert len(read_caption_shards(str(whole), "fail", 8)[0]) == 6 and shard_counts([whole]) == [6]
    with pytest.raises(DataError, match="cut.tar.*truncated"):
        read_caption_shards(str(cut), "fail", 8)
    with pytest.raises(DataError, match="cut.tar' is truncated"):
        shard_counts([cut])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds, skipped = read_caption_shards(str(cut), "skip", 8)
    assert len(ds) == 3 and skipped == {"corrupt_shard": 1}  # the samples before the cut, and the cut counted


def test_a_canvas_of_mostly_padding_is_refused():
    ims = [torch.zeros(3, 32, 32, dtype=torch.uint8)] * 58
    with pytest.raises(DataError, match="canvas of 0.4 GiB"):
        stack_on_canvas(ims + [torch.zeros(3, 1, 1500, dtype=torch.uint8), torch.zeros(3, 1500, 1, dtype=torch.uint8)])
    assert stack_on_canvas(ims + [torch.zeros(3, 32, 64, dtype=torch.uint8)])[0].shape == (59, 3, 32, 64)


def test_corrupt_image_in_a_loader_worker_is_one_line(tmp_path):
    for i in range(4):
        (tmp_path / f"{i}.png").write_bytes(_png(8, 8) if i != 2 else b"not a png")
    ds = StreamingImageFolder([(tmp_path / f"{i}.png", 0) for i in range(4)], ["a"], 8, "s")
    batches = StreamedImageBatches(ds, 2, torch.device("cpu"), workers=1, shuffle=False)
    with pytest.raises(DataError) as e:
        list(batches.epoch(0))
    assert str(e.value).startswith("image '") and "2.png" in str(e.value) and "\n" not in str(e.value)
