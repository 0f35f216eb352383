"""RoCLIP and CleanCLIP on streamed caption shards: RoCLIP trains end to end with its pool checkpointed (an
interrupted run resumes to the uninterrupted one), its streamed views are deterministic per caption; CleanCLIP
fine-tunes a streamed poisoned run on the first samples of a seeded choice of whole clean shards and refuses a
data.path that lists a poison shard; the data-level defenses refuse streams (SafeCLIP streams:
tests/test_safeclip_stream.py); the paper presets plan on a folder of shards."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from clpoison.contexts import FilterContext, TrainingContext
from clpoison.data.captions.caption_shards import iter_shard_samples, shard_paths
from clpoison.data.captions.caption_loader import CaptionImageAugment
from clpoison.data.shards.shard_batches import StreamingCaptionBatches
from clpoison.data.shards.shard_set import StreamingCaptionSet
from clpoison.data.shards.shard_stream import ShardSampleStream
from clpoison.data.captions.tokenizer import CaptionTokenizer
from clpoison.defenses.cleanclip import CleanCLIP, CleanCLIPParams
from clpoison.defenses.roclip import RoCLIP
from clpoison.data.captions.eda import eda_caption
from clpoison.defenses.clip_views import AugmentedBatches
from clpoison.errors import ConfigError
from clpoison.experiments.config import build_config
from clpoison.experiments.runner import run_experiment

from test_shard_stream import streamed_clip_overrides, write_shards
from interrupt import interrupt_and_resume

SHARDS, PER, SIZE = 6, 8, 16
N = SHARDS * PER
BACKDOOR = ["attack.name=carlini-backdoor", "attack.params.target=cat", "attack.params.poison_count=4",
            "attack.params.trigger.size=4", "attack.params.trigger.location=random",
            "eval.sets.cifar.data=cifar10-subset", "eval.sets.cifar.limit=40", "eval.sets.cifar.probe=false"]
ROCLIP = ["defense.name=roclip", "defense.params.pool_size=32", "defense.params.break_epoch=2",
          "defense.params.cross_aug=true"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("streamdef")
    write_shards(d / "train", shards=SHARDS, per=PER)
    write_shards(d / "test", shards=1, per=16)
    return d


def _overrides(d: Path, extra: list[str]) -> list[str]:
    return streamed_clip_overrides(d, ["eval.linear=false", *extra])


def _cfg(d: Path, extra: list[str]):
    return build_config({"preset": "clip-small"}, _overrides(d, extra))


def test_streamed_roclip_trains_and_resumes_exactly(data, tmp_path, monkeypatch):
    cfg = _cfg(data, [*ROCLIP, "train.epochs=3"])
    straight = run_experiment(cfg, tmp_path / "a")
    assert [h["roclip_matching"] for h in straight["history"]] == [False, True, False]
    assert straight["data"]["source"]["streamed"] is True and straight["defense"]["roclip_cross_aug"] is True
    assert [h["step"] for h in straight["history"]] == [3, 6, 9] and all(h["loss"] == h["loss"] for h in straight["history"])
    ckpt = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    pool = ckpt["extra_state"]["roclip_pool"]
    assert int(pool["ptr"]) == N % 32  # pushed with the 48 captions of matching epoch 2 only

    resumed = interrupt_and_resume(monkeypatch, RoCLIP, cfg, tmp_path / "b", 3)  # resumes from epoch 2's checkpoint
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in straight["history"]]
    ck2 = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert torch.equal(ck2["extra_state"]["roclip_pool"]["bank"], pool["bank"])  # restored, not drawn anew
    weights = [k for k, v in ckpt["model"].items() if isinstance(v, torch.Tensor)]
    assert len(weights) > 10 and all(torch.equal(ck2["model"][k], ckpt["model"][k]) for k in weights)


def test_streamed_views_are_deterministic_per_caption(data):
    caps = [c for s in iter_shard_samples(shard_paths(data / "train")) for c in s["captions"]]
    tok = CaptionTokenizer.train(caps, 300)
    base = StreamingCaptionBatches(StreamingCaptionSet(data / "train", SIZE), tok, 24, 8, torch.device("cpu"), 0,
                                   CaptionImageAugment(SIZE), workers=0, shuffle_buffer=4)
    views = AugmentedBatches(base, base.eda_views(tok, 24, 3, 0.3), clean_images=True)
    texts = [t for b in base.epoch(1, raw=True) for t in b["texts"]]
    got = list(views.epoch(1))
    assert len(got) == len(base) == N // 8 and sorted(texts) == sorted(caps)
    for i, b in enumerate(got):
        assert {"images", "images_aug", "tokens", "tokens_aug"} <= set(b) and "texts" not in b
        assert b["images_aug"].shape == b["images"].shape == (8, 3, SIZE, SIZE)
        want = tok.encode([eda_caption(t, 3, 0.3) for t in texts[8 * i: 8 * i + 8]], 24)
        assert torch.equal(b["tokens_aug"], want[:, : b["tokens_aug"].shape[1]])
    assert eda_caption(caps[0], 3, 0.3) == eda_caption(caps[0], 3, 0.3)  # a pure function of (seed, text)
    assert len({eda_caption(c, s, 0.3) for c in caps[:4] for s in range(8)}) > 4  # ... which changes with both
    # RoCLIP without cross_aug: the streamed batches as they are, flagged on matching epochs
    from clpoison.methods.build import build_method

    clip = build_method("clip", {"embed_dim": 16, "text_tower": "bow", "text_width": 16, "context_length": 24},
                        {"arch": "convnet", "width": 4}, tokenizer=tok)
    ro = RoCLIP(RoCLIP.Params(pool_size=8, break_epoch=2, cross_aug=False))
    _, flagged = ro.wrap_training(clip, base, TrainingContext(seed=0))
    assert [b["roclip_matching"] for e in (0, 1) for b in flagged.epoch(e)] == [False] * 6 + [True] * 6
    assert "images_aug" not in next(iter(flagged.epoch(0)))


def test_streamed_cleanclip_finetunes_on_clean_shards(data, tmp_path):
    poisoned = tmp_path / "poisoned"
    run_experiment(_cfg(data, BACKDOOR), poisoned)
    man = json.loads((poisoned / "manifest.json").read_text())
    assert man["stream"]["poison_shards"]  # the poisons are an extra shard of the poisoned run's folder
    cfg = _cfg(data, [*BACKDOOR, "defense.name=cleanclip", f"defense.params.checkpoint={poisoned}",
                      "defense.params.finetune_pairs=20", "train.batch_size=8", "train.lr=1e-4"])
    res = run_experiment(cfg, tmp_path / "cc")
    d = res["defense"]
    clean = [p.name for p in shard_paths(data / "train")]
    want = [clean[i] for i in np.random.default_rng(12_345).permutation(SHARDS)[:3]]  # 8 + 8 + 4 of the third
    assert d["cleanclip_split"] == "clean-shards" and d["cleanclip_finetune_shards"] == want
    assert d["cleanclip_finetune_pairs"] == 20 and d["cleanclip_poisons_in_split"] == 0 and d["cleanclip_poisoned_rows"] == 4
    assert res["data"]["train_pairs"] == 20 and [h["step"] for h in res["history"]] == [20 // 8]
    assert "asr" in res["metrics"] and res["history"][0]["loss"] == res["history"][0]["loss"]
    assert (tmp_path / "cc" / "tokenizer.json").read_text() == (poisoned / "tokenizer.json").read_text()

    # the split streams exactly the first 20 samples of those shards, in that order
    train = StreamingCaptionSet(data / "train", SIZE)
    sub, _ = CleanCLIP(CleanCLIPParams(checkpoint=str(poisoned), finetune_pairs=20)).filter(train, FilterContext(seed=0))
    got = [c[0] for _, c in ShardSampleStream(sub.shards, SIZE, 0, 1, 0, 0, 0, limits=sub.limits)]
    first = [c for s in iter_shard_samples([data / "train" / w for w in want]) for c in s["captions"]][:20]
    assert got == first == [c for cs in sub.captions for c in cs] and len(sub) == 20

    # a data.path that lists a poison shard of the poisoned run, and finetune_split=range: one line each
    man["stream"]["folder"] = str(data / "train")
    man["stream"]["poison_shards"] = [{"file": clean[2], "sha256": "x", "samples": PER}]
    (poisoned / "manifest.json").write_text(json.dumps(man))
    for params, msg in (({}, "a poison shard of the poisoned run"), ({"finetune_split": "range", "finetune_range": [0, 8]},
                                                                   "names rows of data held in memory")):
        with pytest.raises(ConfigError, match=msg) as e:
            CleanCLIP(CleanCLIPParams(checkpoint=str(poisoned), finetune_pairs=20, **params)).filter(train, FilterContext(seed=0))
        assert "\n" not in str(e.value)


def test_data_defenses_refuse_streams_naming_the_supported_defenses(data, tmp_path):
    # an image defense is refused by its modality before the data (and whether it streams) is looked at
    with pytest.raises(ConfigError, match=r"defense.name=grayscale works on image data but method.name=clip trains "
                                          r"on image-text data; use a defense for image-text data \(cleanclip, none, "
                                          r"roclip, safeclip\)") as e:
        run_experiment(_cfg(data, ["defense.name=grayscale"]), tmp_path / "run")
    assert "\n" not in str(e.value) and not (tmp_path / "run").exists()


@pytest.mark.parametrize("preset, extra, lines", [
    ("roclip-paper", [], ["steps: 20 per epoch × 24 epochs = 480"]),
    ("cleanclip-paper", ["defense.params.finetune_pairs=40"],
     ["defense: cleanclip trains on 40 of the 80 train pairs", "steps: 10 per epoch × 10 epochs = 100"]),
])
def test_paper_presets_stream_and_plan(tmp_path, capsys, preset, extra, lines):
    from clpoison.cli import main

    write_shards(tmp_path / "train")
    write_shards(tmp_path / "val", shards=1, per=8)
    (tmp_path / "c.yaml").write_text(f"preset: {preset}\n")
    tiny = ["data.image_size=16", "augment.out_size=16", "model.width=4", "method.params.text_width=16",
            "method.params.text_layers=1", "method.params.text_heads=2", "method.params.embed_dim=16",
            "method.params.vocab_size=300", "data.captions.workers=0", "train.batch_size=4", "device=cpu"]
    rc = main(["run", str(tmp_path / "c.yaml"), f"data.path={tmp_path / 'train'}",
               f"data.captions.test_path={tmp_path / 'val'}", *tiny, *extra, "--out", str(tmp_path / "run"), "--dry-run"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "data: captions-tar: 80 train / 8 test, streamed from 10 shards" in out and "stream: true" in out
    assert f"name: {preset.split('-')[0]}" in out and "measured:" in out
    assert all(line in out for line in lines), out[-1500:]
    assert not (tmp_path / "run").exists() and not (tmp_path / "run.partial").exists()


@pytest.mark.ddp
@pytest.mark.slow
def test_torchrun_two_processes_streamed_roclip(data, tmp_path):
    """2 gloo processes split the 6 shards; matching epoch 2 pushes both processes' captions: one pool, one result."""
    import os
    import subprocess
    import sys

    from ddp_helpers import free_port

    (tmp_path / "c.yaml").write_text("preset: clip-small\n")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2", "--master_addr",
           "127.0.0.1", "--master_port", str(free_port()), "-m", "clpoison", "run", "c.yaml",
           *_overrides(data, [*ROCLIP, "train.epochs=2"]), "--out", "run", "--no-progress"]
    r = subprocess.run(cmd, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("wrote ") == 1, r.stdout
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["environment"]["world_size"] == 2 and [h["roclip_matching"] for h in res["history"]] == [False, True]
    assert [h["step"] for h in res["history"]] == [3, 6] and all(h["loss"] == h["loss"] for h in res["history"])
    pool = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["extra_state"]["roclip_pool"]
    assert int(pool["ptr"]) == N % 32  # 3 steps of the global batch of 16: both processes' captions pushed
