"""Pins: the poisons the CLIP attacks choose (rows, images, captions, manifest) and the batches the CLIP defenses
build, on data held in memory and on streamed shards, are byte-identical to those recorded before the one pair-source
refactor (issue 30) — the same RNG draws in the same order. The digests were recorded on the code before it."""

from __future__ import annotations

import hashlib
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from clpoison.attacks import ATTACKS
from clpoison.poisoned.manifest import manifest_sha256
from clpoison.contexts import FilterContext, PoisonContext, TrainingContext
from clpoison.data.captions.caption_loader import CaptionBatches, CaptionImageAugment, flat_captions
from clpoison.data.captions.caption_shards import read_caption_shards
from clpoison.data.captions import CaptionDataset, CaptionSplits
from clpoison.data.shards.shard_batches import StreamingCaptionBatches
from clpoison.data.shards.shard_set import StreamingCaptionSet
from clpoison.data.captions.tokenizer import CaptionTokenizer
from clpoison.defenses import DEFENSES
from clpoison.methods.build import build_method

from test_shard_stream import write_shards

SHARDS, PER, SIZE = 6, 8, 16
N = SHARDS * PER
CPU = torch.device("cpu")
NAMES = ["cat", "dog", "ship"]


def digest(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        if torch.is_tensor(p):
            t = p.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.numpy().tobytes())
        elif isinstance(p, np.ndarray):
            h.update(f"{p.dtype}{p.shape}".encode())
            h.update(np.ascontiguousarray(p).tobytes())
        else:
            h.update(json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def batch_digest(batches) -> str:
    parts = []
    for b in batches:
        for k in sorted(b):
            parts += [k, b[k]]
    return digest(*parts)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("pins")
    write_shards(d / "train", shards=SHARDS, per=PER)
    g = torch.Generator().manual_seed(5)
    test = CaptionDataset(torch.randint(0, 256, (12, 3, SIZE, SIZE), dtype=torch.uint8, generator=g),
                          [[f"a {NAMES[i % 3]}"] for i in range(12)], NAMES, torch.arange(12) % 3, "test")
    resident, _ = read_caption_shards(d / "train", image_size=SIZE)
    tok = CaptionTokenizer.train(flat_captions(resident), 300)
    return SimpleNamespace(dir=d, test=test, resident=resident, tok=tok)


def _streamed(data) -> StreamingCaptionSet:
    return StreamingCaptionSet(data.dir / "train", SIZE)


def _poison_shard(run) -> tuple:
    shard, _ = read_caption_shards(run / "poison_shards", image_size=None)
    return shard.images, shard.captions


BACKDOOR = {"target": "cat", "poison_count": 5, "trigger": {"size": 4, "location": "random"}}
TARGETED = {"adversarial_labels": ["dog", "ship"], "pairs_per_target": 3}


@pytest.mark.parametrize("name, params, mem_pin, stream_pin", [
    ("carlini-backdoor", BACKDOOR, ("abaed44e29c19f99", "90edc10c47881cae"), ("5e02cf070a97450d", "0b31779b6db96b37")),
    ("carlini-targeted", TARGETED, ("0878673b4302b31d", "c85d213af90e8646"), ("8a1db505b206e111", "c3ba17608948b3bd")),
])
def test_poisons_are_todays(data, tmp_path, name, params, mem_pin, stream_pin):
    mem = ATTACKS.build(name, params).poison(CaptionSplits(data.resident, data.test), 3)
    m = mem.manifest
    rows = m["poisoned_indices"] + m["added_indices"]
    got_mem = (digest(rows, mem.splits.train.images[rows], [mem.splits.train.captions[i] for i in rows]),
               manifest_sha256(m)[:16])
    streamed = ATTACKS.build(name, params).poison(CaptionSplits(_streamed(data), data.test), 3, PoisonContext(run_dir=tmp_path))
    s = streamed.manifest
    images, captions = _poison_shard(tmp_path)
    got_stream = (digest(s["added_indices"], s["details"], images, captions), manifest_sha256(s)[:16])
    assert (got_mem, got_stream) == (mem_pin, stream_pin)


def _clip(tok):
    torch.manual_seed(0)
    return build_method("clip", {"embed_dim": 16, "text_width": 16, "text_layers": 1, "text_heads": 2,
                                 "context_length": 24, "vocab_size": 300}, {"arch": "convnet", "width": 4}, tokenizer=tok)


def _sources(data, batch=8):
    aug = CaptionImageAugment(SIZE, "rrc")
    res = CaptionBatches(data.resident, data.tok.encode(flat_captions(data.resident), 24), batch, CPU, 1, aug)
    st = StreamingCaptionBatches(_streamed(data), data.tok, 24, batch, CPU, 1, CaptionImageAugment(SIZE, "rrc"),
                                 workers=0, shuffle_buffer=4)
    return res, st


def _epochs(batches, epochs=(0, 1)):
    torch.manual_seed(11)
    return batch_digest([b for e in epochs for b in batches.epoch(e)])


ROCLIP_PINS = ("b191612d401cd64f", "e1246d0e162746f9")


def test_roclip_batches_are_todays(data):
    got = []
    for base in _sources(data):
        clip = _clip(data.tok)
        _, views = DEFENSES.build("roclip", {"pool_size": 8, "eda_alpha": 0.3}).wrap_training(
            clip, base, TrainingContext(seed=2, train_set=data.resident))
        got.append(_epochs(views))
    assert tuple(got) == ROCLIP_PINS


CLEANCLIP_PINS = ("5a93d37dd358e5ace3868b13f9310921", "9558f984de4a37f070b9e6e817b89687")


def test_cleanclip_split_and_batches_are_todays(data, tmp_path):
    model = {"arch": "convnet"}
    torch.save({"config": {"method": {"name": "clip"}, "model": model}, "epoch": 1}, tmp_path / "ck.pt")
    p = {"checkpoint": str(tmp_path / "ck.pt"), "finetune_pairs": 20, "eda_alpha": 0.3}
    manifest = {"poisoned_indices": [3, 7, 30], "added_indices": []}
    got = []
    for train, base in zip((data.resident, _streamed(data)), _sources(data)):
        cc = DEFENSES.build("cleanclip", p)
        sub, info = cc.filter(train, FilterContext(seed=4, manifest=manifest))
        clip = _clip(data.tok)
        if isinstance(base, CaptionBatches):
            base = CaptionBatches(sub, data.tok.encode(flat_captions(sub), 24), 4, CPU, 1, CaptionImageAugment(SIZE, "rrc"))
        else:
            base = StreamingCaptionBatches(sub, data.tok, 24, 4, CPU, 1, CaptionImageAugment(SIZE, "rrc"), workers=0,
                                           shuffle_buffer=4)
        _, views = cc.wrap_training(clip, base, TrainingContext(seed=4, model=model, train_set=sub,
                                                               load_method=lambda ckpt, what: clip))
        got.append(digest(info, sorted(flat_captions(sub)) if hasattr(sub, "images") else sub.captions) + _epochs(views))
    assert tuple(got) == CLEANCLIP_PINS


SAFECLIP_PINS = {
    "official": ("4c81464d6659bb2705abade17aa13bbad64e026b705f1791", "b4805ae3c037911db9d2ab8b1b0b765fd45f7d8946104c1e"),
    "clean": ("cdb999623d7164a505abade17aa13bbabbb52436bc1ee27b", "cdb999623d7164a5b9d2ab8b1b0b765ffd5502ab0a9ce10c"),
}


@pytest.mark.parametrize("view", ["official", "clean"])
def test_safeclip_batches_and_scores_are_todays(data, view):
    params = ({"eda_alpha": 0.3, "eval_batch_size": 10} if view == "official" else
              {"eda_alpha": 0.3, "eval_batch_size": 10, "similarity_view": "clean", "image_aug": "clip",
               "cross_aug": False})
    risky = np.array([2, 5, 40, 41, 42, 43, 44, 45, 46, 47])
    safe = np.setdiff1d(np.arange(N), np.r_[risky, [0, 1]])
    got = []
    for base in _sources(data):
        clip = _clip(data.tok)
        method, b = DEFENSES.build("safeclip", params).wrap_training(clip, base, TrainingContext(seed=1, train_set=data.resident))
        sims = b.similarities(method.model, 6)
        b.set_plan(0, [("inmodal", np.arange(N))])
        first = _epochs(b, (0,))
        b.set_plan(6, [("inmodal", risky), ("clip", safe)])
        steps = b.plan_steps(6)
        got.append(digest(np.round(sims, 5), steps) + first + _epochs(b, (6,)))
    assert tuple(got) == SAFECLIP_PINS[view]


def test_both_implementations_follow_the_protocol(data):
    """The resident split and the shard stream both implement PairSource / PairBatches (what the CLIP attacks and
    defenses are written against); anything else is refused by the defenses' one guard."""
    from clpoison.data.captions.pair_source import is_pair_batches, is_pair_source
    from clpoison.defenses.clip_views import require_pair_batches
    from clpoison.errors import ConfigError

    streamed = _streamed(data)
    assert is_pair_source(data.resident) and is_pair_source(streamed) and not is_pair_source(data.test.images)
    assert streamed._captions is None  # checking the protocol reads nothing from the shards
    assert all(is_pair_batches(b) for b in _sources(data))
    assert data.resident.canvas == streamed.canvas == (SIZE, SIZE)
    clip = _clip(data.tok)
    with pytest.raises(ConfigError, match="defense 'roclip' needs an image-text method"):
        require_pair_batches("roclip", clip, object())
