"""SafeCLIP on streamed caption shards: samples carry their global ordinal (skipped ones keep theirs); the streamed
similarity pass equals the in-memory one on the same data (by ordinal); each segment pass yields only its samples and exactly plan_steps
batches on every process (also when one process's shards hold none of them); a streamed carlini-backdoor run
trains through both phases and two filtering epochs, records the split and the poisons' recall, and resumes
exactly; safeclip-paper streams and plans on a folder of shards."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
import torch

from clpoison.contexts import TrainingContext
from clpoison.data.captions.caption_loader import CaptionBatches, CaptionImageAugment, flat_captions
from clpoison.data.captions.caption_shards import iter_shard_samples, read_caption_shards, shard_paths
from clpoison.data.shards.shard_batches import StreamingCaptionBatches
from clpoison.data.shards.shard_set import StreamingCaptionSet
from clpoison.data.shards.shard_stream import ShardSampleStream
from clpoison.data.captions.tokenizer import CaptionTokenizer
from clpoison.defenses import DEFENSES
from clpoison.defenses.safeclip.safeclip import SafeCLIP, SafeCLIPParams
from clpoison.data.captions.eda import eda_caption
from clpoison.defenses.safeclip.safeclip_batches import SafeCLIPBatches
from clpoison.experiments.runner import run_experiment
from clpoison.methods.build import build_method

from test_shard_stream import write_shards
from test_stream_defenses import BACKDOOR, _cfg
from interrupt import interrupt_and_resume

SHARDS, PER, SIZE = 6, 8, 16
N = SHARDS * PER
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("safestream")
    write_shards(d / "train", shards=SHARDS, per=PER)
    write_shards(d / "test", shards=1, per=16)
    return d


@pytest.fixture(scope="module")
def tok(data):
    return CaptionTokenizer.train([c for s in iter_shard_samples(shard_paths(data / "train")) for c in s["captions"]], 300)


def _clip(tok):
    torch.manual_seed(0)
    return build_method("clip", {"embed_dim": 16, "text_width": 16, "text_layers": 1, "text_heads": 2,
                                 "context_length": 24, "vocab_size": 300}, {"arch": "convnet", "width": 4}, tokenizer=tok)


def _streamed(data, tok, params, batch=8, rank=0, world=1, workers=0, buffer=4):
    base = StreamingCaptionBatches(StreamingCaptionSet(data / "train", SIZE), tok, 24, batch, CPU, 0,
                                   CaptionImageAugment(SIZE), rank=rank, world_size=world, workers=workers,
                                   shuffle_buffer=buffer)
    return SafeCLIP(params).wrap_training(_clip(tok), base, TrainingContext(seed=0))


def test_samples_carry_their_ordinal_in_memory_order(data):
    train = StreamingCaptionSet(data / "train", SIZE)
    starts = train.shard_starts()
    assert list(starts.values()) == [PER * i for i in range(SHARDS)] and train.counts == [PER] * SHARDS
    resident, _ = read_caption_shards(data / "train", image_size=SIZE)
    keep = np.zeros(N, dtype=bool)
    keep[[1, 9, 10, 47]] = True
    got = list(ShardSampleStream(train.shards, SIZE, 0, 1, 0, 3, shuffle_buffer=4, starts=starts, keep=keep))
    assert sorted(o for _, _, o in got) == [1, 9, 10, 47]
    for img, caps, o in got:  # the ordinal is the index the same sample has in memory
        assert caps == resident.captions[o] and torch.equal(img, resident.images[o])


def test_skipped_samples_keep_the_ordinals_and_are_scored_at_the_mean(tmp_path, tok):
    """on_error=skip: a corrupt image and a sample without a caption keep their ordinals (the tar headers count
    them), are never yielded, and the similarity pass scores them at the mean of the others."""
    from PIL import Image

    with tarfile.open(tmp_path / "shard-000000.tar", "w") as tf:
        for i in range(6):
            buf = io.BytesIO()
            Image.fromarray(np.full((20, 24, 3), 40 * i, dtype=np.uint8)).save(buf, "png")
            members = [(f"{i:03d}.png", b"not an image" if i == 1 else buf.getvalue())]
            members += [] if i == 2 else [(f"{i:03d}.txt", f"a cat number {i}".encode())]
            for name, raw in members:
                info = tarfile.TarInfo(name)
                info.size = len(raw)
                tf.addfile(info, io.BytesIO(raw))
    train = StreamingCaptionSet(tmp_path, SIZE, on_error="skip")
    assert len(train) == 6
    base = StreamingCaptionBatches(train, tok, 24, 2, CPU, 0, CaptionImageAugment(SIZE), workers=0, shuffle_buffer=0)
    method, b = SafeCLIP(SafeCLIPParams(similarity_view="clean")).wrap_training(_clip(tok), base, TrainingContext(seed=0))
    sims = b.similarities(method.model, 0)
    assert b.unscored == 2 and np.isfinite(sims).all()
    assert sims[1] == sims[2] == pytest.approx(float(sims[[0, 3, 4, 5]].mean()))
    b.set_plan(0, [("clip", np.arange(6))])
    got = [x["index"].tolist() for x in b.epoch(0)]
    assert b.plan_steps(0) == [("clip", 3)] and sorted(sum(got, [])) == [0, 0, 3, 3, 4, 5]  # re-read to 3 steps


def test_streamed_similarities_equal_in_memory(data, tok):
    params = SafeCLIPParams(similarity_view="clean", eval_batch_size=10)
    method, streamed = _streamed(data, tok, params)
    assert isinstance(streamed, SafeCLIPBatches) and isinstance(streamed.base, StreamingCaptionBatches) and streamed.n == N
    resident, _ = read_caption_shards(data / "train", image_size=SIZE)
    cb = CaptionBatches(resident, tok.encode(flat_captions(resident), 24), 8, CPU, 0, CaptionImageAugment(SIZE))
    _, mem = DEFENSES.get("safeclip")(params).wrap_training(_clip(tok), cb, TrainingContext(train_set=resident, seed=0))
    s_stream, s_mem = streamed.similarities(method.model, 2), mem.similarities(method.model, 2)
    assert s_stream.shape == s_mem.shape == (N,) and s_stream.std() > 1e-4
    np.testing.assert_allclose(s_stream, s_mem, atol=1e-5)
    assert streamed.unscored == 0 and method.model.training  # the train mode is restored
    official = _streamed(data, tok, SafeCLIPParams(eval_batch_size=16))[1].similarities(method.model, 2)
    assert not np.allclose(official, s_mem, atol=1e-3)  # augmented view + EDA caption


@pytest.mark.parametrize("world, workers", [(1, 2), (2, 0)])
def test_segment_passes_yield_their_kind_and_plan_steps(data, tok, world, workers):
    risky = np.arange(40, 48)  # one shard (like a poison shard): with 2 processes only one holds it
    safe = np.setdiff1d(np.arange(N), np.r_[risky, [0, 1, 2]])  # 37 samples; 0..2 in neither (not trained on)
    params = SafeCLIPParams(image_aug="clip", eda_alpha=0.3)
    runs = []
    for rank in range(world):
        _, b = _streamed(data, tok, params, batch=8 // world, rank=rank, world=world, workers=workers)
        b.set_plan(5, [("inmodal", risky), ("clip", safe)])
        assert b.plan_steps(5) == [("inmodal", 1), ("clip", 37 // 8)]
        runs.append(list(b.epoch(5)))
        b.set_plan(0, [("inmodal", np.arange(N))])
        assert b.plan_steps(0) == [("inmodal", N // 8)] and len(list(b.epoch(0))) == N // 8 == len(b)
    for got in runs:
        assert [x["phase"] for x in got] == ["inmodal"] + ["clip"] * 4
        assert all(len(x["index"]) == 8 // world for x in got)
        assert set(got[0]["index"].tolist()) <= set(risky.tolist())
        clip_idx = torch.cat([x["index"] for x in got[1:]]).tolist()
        assert set(clip_idx) <= set(safe.tolist()) and len(set(clip_idx)) == len(clip_idx)  # one pass, no repeats
        x = got[1]
        assert {"images", "images2", "tokens", "tokens2"} <= set(x) and x["images"].shape == (8 // world, 3, SIZE, SIZE)
    # the EDA views are the deterministic per-caption ones (views seeded 2·seed and 2·seed + 1)
    resident, _ = read_caption_shards(data / "train", image_size=SIZE)
    x = runs[0][1]
    texts = [resident.captions[o][0] for o in x["index"].tolist()]
    for k, key in enumerate(("tokens", "tokens2")):
        want = tok.encode([eda_caption(t, k, 0.3) for t in texts], 24)
        assert torch.equal(x[key], want[:, : x[key].shape[1]])
    if world == 2:  # both processes covered the global safe set between them without overlap in a step
        assert not set(runs[0][1]["index"].tolist()) & set(runs[1][1]["index"].tolist())


def test_streamed_backdoor_run_splits_records_and_resumes(data, tmp_path, monkeypatch):
    ov = [*BACKDOOR, "defense.name=safeclip", "train.epochs=4", "defense.params.inmodal_epochs=1",
          "defense.params.crossmodal_epochs=1", "defense.params.warmup_epochs=0.5", "defense.params.eval_batch_size=16",
          "defense.params.histograms=false", "defense.params.cap_filter_ratio=0.7",
          "defense.params.group_duplicates=true"]  # streamed keys, and a resumed run re-keys to the same groups
    cfg = _cfg(data, ov)
    straight = run_experiment(cfg, tmp_path / "a")
    h = straight["history"]
    assert straight["data"]["source"]["streamed"] is True and straight["data"]["train_pairs"] == N + 4
    assert [r["safeclip_phase"] for r in h] == ["inmodal", "crossmodal", "filtered", "filtered"]
    assert [r.get("safeclip_rule") for r in h][2:] == ["threshold", "ratio"]
    man = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert man["added_indices"] == list(range(N, N + 4))  # the poison shard's ordinals
    for r in h[2:]:
        assert r["safeclip_safe"] + r["safeclip_risky"] == N + 4
        assert r["safeclip_poison_recall_risky"] == pytest.approx(r["safeclip_poisons_in_risky"] / 4)
    steps = [r["step"] for r in h]
    assert steps[:2] == [3, 6] and all(b > a for a, b in zip(steps, steps[1:]))
    assert all(r["loss"] == r["loss"] for r in h) and "asr" in straight["metrics"]

    resumed = interrupt_and_resume(monkeypatch, SafeCLIP, cfg, tmp_path / "b", 3)  # in the 2nd filtering epoch
    assert all(r["safeclip_grouped_pairs"] == h[2]["safeclip_grouped_pairs"] for r in h[2:])
    key = ("safeclip_phase", "safeclip_rule", "safeclip_safe", "safeclip_safe_fraction", "safeclip_grouped_pairs",
           "safeclip_groups", "step", "loss")
    assert [[r.get(k) for k in key] for r in resumed["history"]] == [[r.get(k) for k in key] for r in h]


def test_safeclip_paper_streams_and_plans(tmp_path, capsys):
    from clpoison.cli import main

    write_shards(tmp_path / "train")
    write_shards(tmp_path / "val", shards=1, per=8)
    (tmp_path / "c.yaml").write_text("preset: safeclip-paper\n")
    tiny = ["data.image_size=16", "augment.out_size=16", "model.width=4", "method.params.text_width=16",
            "method.params.text_layers=1", "method.params.text_heads=2", "method.params.embed_dim=16",
            "method.params.vocab_size=300", "data.captions.workers=0", "train.batch_size=4", "device=cpu"]
    rc = main(["run", str(tmp_path / "c.yaml"), f"data.path={tmp_path / 'train'}",
               f"data.captions.test_path={tmp_path / 'val'}", *tiny, "--out", str(tmp_path / "run"), "--dry-run"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "data: captions-tar: 80 train / 8 test, streamed from 10 shards" in out and "stream: true" in out
    assert "name: safeclip" in out and "steps: 20 per epoch × 32 epochs = 640" in out and "measured:" in out
    assert not (tmp_path / "run").exists() and not (tmp_path / "run.partial").exists()


@pytest.mark.ddp
def test_torchrun_two_processes_streamed_safeclip(data, tmp_path):
    """2 gloo processes split the 6 shards: the similarity pass is gathered by ordinal, both processes cut the same
    split and run the same number of steps per segment (else DDP would hang or fail), and the run finishes."""
    import os
    import subprocess
    import sys

    from ddp_helpers import free_port
    from test_stream_defenses import _overrides

    (tmp_path / "c.yaml").write_text("preset: clip-small\n")
    ov = ["defense.name=safeclip", "train.epochs=3", "defense.params.inmodal_epochs=1",
          "defense.params.crossmodal_epochs=1", "defense.params.warmup_epochs=0.5", "defense.params.histograms=false",
          "defense.params.split_every=2"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2", "--master_addr",
           "127.0.0.1", "--master_port", str(free_port()), "-m", "clpoison", "run", "c.yaml", *_overrides(data, ov),
           "--out", "run", "--no-progress"]
    r = subprocess.run(cmd, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    h = res["history"]
    assert res["environment"]["world_size"] == 2 and [x["safeclip_phase"] for x in h] == ["inmodal", "crossmodal", "filtered"]
    assert h[2]["safeclip_safe"] + h[2]["safeclip_risky"] == N and h[2]["step"] > h[1]["step"] == 6
    with np.load(tmp_path / "run" / "safeclip" / "last_scores.npz") as z:  # every ordinal scored (by one process each)
        assert z["sims"].shape == (N,) and np.isfinite(z["sims"]).all() and len(np.unique(z["sims"])) == N
