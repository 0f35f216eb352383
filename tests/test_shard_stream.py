"""Streaming caption shards: split without overlap across 2 processes × 2 loader workers; in shard order they give
the batches (and, trained, the weights) of the same data held in memory; a run streams them end to end."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clpoison.data.captions.caption_loader import CaptionBatches, CaptionImageAugment, flat_captions
from clpoison.data.captions.caption_shards import read_caption_shards, shard_paths
from clpoison.data.shards.shard_batches import StreamingCaptionBatches
from clpoison.data.shards.shard_set import StreamingCaptionSet
from clpoison.data.shards.shard_stream import (ShardSampleStream,
                                        count_samples, split_shards)
from clpoison.data.captions.tokenizer import CaptionTokenizer
from clpoison.engine.trainer import TrainConfig, Trainer
from clpoison.errors import DataError
from clpoison.methods.build import build_method

SHARDS, PER_SHARD, SIZE = 10, 8, 16
WORDS = ["red", "green", "blue", "cat", "dog", "ship", "car", "bird"]


def streamed_clip_overrides(d: Path, extra: list[str]) -> list[str]:
    """Overrides of a tiny streamed CLIP run on the shards in ``d/train`` (test split ``d/test``), then ``extra``."""
    return [
        "data.name=captions-tar", f"data.path={d / 'train'}", f"data.captions.test_path={d / 'test'}",
        "data.captions.stream=true", "data.captions.workers=0", "data.captions.shuffle_buffer=8", "model.width=4",
        "method.params.text_width=16", "method.params.text_layers=1", "method.params.text_heads=2",
        "method.params.embed_dim=16", "method.params.vocab_size=300", "train.epochs=1", "train.batch_size=16",
        "augment.out_size=16", "eval.knn_k=5", "train.progress=false", "eval.random_init_control=false",
        *extra]


def write_shards(folder: Path, shards: int = SHARDS, per: int = PER_SHARD, json_every: int = 3) -> list[str]:
    """``shard-000000.tar`` ...: PNG/JPEG images with a .txt (or, every ``json_every``-th, a .json) caption."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    captions = []
    for s in range(shards):
        with tarfile.open(folder / f"shard-{s:06d}.tar", "w") as tf:
            for i in range(per):
                key = f"{s:03d}{i:03d}"
                cap = f"a {WORDS[(s + i) % 8]} {WORDS[i % 8]} number {s * per + i}"
                captions.append(cap)
                buf = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(buf, "png" if i % 2 else "jpeg")
                text = json.dumps({"caption": cap}).encode() if i % json_every == 0 else cap.encode()
                for name, data in ((f"{key}.{'png' if i % 2 else 'jpg'}", buf.getvalue()),
                                   (f"{key}.{'json' if i % json_every == 0 else 'txt'}", text)):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
    return captions


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("shards")
    caps = write_shards(d / "train")
    write_shards(d / "test", shards=1, per=16)
    return d, caps


def test_brace_list_folder_and_count(shards):
    d, caps = shards
    brace = shard_paths(str(d / "train" / "shard-{000000..000009}.tar"))
    assert brace == shard_paths(d / "train") and len(brace) == SHARDS
    assert count_samples(brace) == len(caps) == SHARDS * PER_SHARD
    assert [c for cs in StreamingCaptionSet(d / "train", SIZE).captions for c in cs] == caps  # .txt and .json
    with pytest.raises(DataError, match="does not exist"):
        shard_paths(str(d / "train" / "shard-{000000..000010}.tar"))


def test_two_ranks_two_workers_split_shards_without_overlap(shards):
    d, caps = shards
    paths = shard_paths(d / "train")
    parts = [split_shards(paths, r, 2, w, 2) for r in range(2) for w in range(2)]
    flat = [p for part in parts for p in part]
    assert sorted(flat) == sorted(paths) and len(flat) == len(set(flat))
    seen = []
    for r in range(2):  # the real loader, 2 worker processes per rank
        stream = ShardSampleStream(paths, SIZE, r, 2, seed=0, epoch=3, shuffle_buffer=4)
        loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2)
        got = [c[0] for _, c in loader]
        assert len(got) == len(set(got))
        seen.append(set(got))
    assert not seen[0] & seen[1], "a sample reached both processes"
    assert seen[0] | seen[1] == set(caps), "a sample reached neither process"


def _sources(d, tok, seed=0, bs=16):
    resident, _ = read_caption_shards(d / "train", image_size=SIZE)
    aug = CaptionImageAugment(SIZE)
    res = CaptionBatches(resident, tok.encode(flat_captions(resident), 24), bs, torch.device("cpu"), seed, aug,
                         shuffle=False)
    streamed = StreamingCaptionBatches(StreamingCaptionSet(d / "train", SIZE), tok, 24, bs, torch.device("cpu"), seed,
                                       CaptionImageAugment(SIZE), workers=0, shuffle_buffer=0)
    return res, streamed


def test_streamed_equals_resident_batches_and_training(shards):
    d, caps = shards
    tok = CaptionTokenizer.train(caps, 300)
    res, streamed = _sources(d, tok)
    assert len(res) == len(streamed) == SHARDS * PER_SHARD // 16
    for e in range(2):
        torch.manual_seed(e)
        a = list(res.epoch(e))
        torch.manual_seed(e)
        b = list(streamed.epoch(e))
        assert len(a) == len(b) == len(res)
        for x, y in zip(a, b):
            assert torch.equal(x["images"], y["images"]) and torch.equal(x["tokens"], y["tokens"])
    weights = []
    for source in _sources(d, tok):
        torch.manual_seed(0)
        m = build_method("clip", {"embed_dim": 16, "text_tower": "bow", "text_width": 16, "context_length": 24},
                         {"arch": "convnet", "width": 4}, tokenizer=tok)
        t = Trainer(m, source, TrainConfig(epochs=2, batch_size=16, optimizer="adamw", lr=1e-3, warmup_epochs=0,
                                           progress=False, amp="off"), torch.device("cpu"))
        hist = t.fit()
        weights.append(([h["loss"] for h in hist], m.state_dict()))
    assert weights[0][0] == weights[1][0]
    for k, v in weights[0][1].items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, weights[1][1][k]), k


def test_each_process_yields_the_same_number_of_steps(shards):
    d, caps = shards
    tok = CaptionTokenizer.train(caps, 300)
    ds = StreamingCaptionSet([str(p) for p in shard_paths(d / "train")[:3]], SIZE)  # 3 shards over 2 processes
    steps = []
    for r in range(2):
        b = StreamingCaptionBatches(ds, tok, 24, 4, torch.device("cpu"), 0, CaptionImageAugment(SIZE), rank=r,
                                    world_size=2, workers=0, shuffle_buffer=2)
        steps.append(sum(1 for _ in b.epoch(0)))
    assert steps == [len(b)] * 2 == [3 * PER_SHARD // 8] * 2  # rank 1 (one shard) reads it again to keep step


def test_run_streams_shards_end_to_end(shards, tmp_path):
    from clpoison.experiments.config import build_config
    from clpoison.experiments.runner import run_experiment

    d, _ = shards
    cfg = build_config({"preset": "clip-small"}, [
        "data.name=captions-tar", f"data.path={d / 'train'}", f"data.captions.test_path={d / 'test'}",
        "data.captions.stream=true", "data.captions.workers=2", "data.captions.shuffle_buffer=8", "model.width=4",
        "train.epochs=1", "train.batch_size=16", "augment.out_size=16", "eval.knn_k=5", "train.progress=false",
        "eval.random_init_control=false"])
    res = run_experiment(cfg, tmp_path / "run")
    assert res["data"]["train_pairs"] == SHARDS * PER_SHARD and res["data"]["source"]["streamed"] is True
    assert len(res["history"]) == 1 and res["history"][0]["step"] == SHARDS * PER_SHARD // 16
    assert 0.0 <= res["metrics"]["recall_at_1_i2t"] <= 1.0
