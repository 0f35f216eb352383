"""SafeCLIP's duplicate groups (``group_duplicates``): exact keys of the stored image and the caption tokens, the same
in memory and streamed; groups are the connected components of shared keys (a key held by too many pairs links
nothing); each pair is split at its group's lowest posterior, so the pairs of one targeted victim are all safe or all
risky; a targeted run records the groups and keeps every victim's pairs together."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from clpoison.contexts import TrainingContext
from clpoison.data.captions import CaptionDataset
from clpoison.data.captions.caption_loader import CaptionBatches, CaptionImageAugment, flat_captions
from clpoison.data.captions.caption_shards import read_caption_shards
from clpoison.data.captions.tokenizer import CaptionTokenizer
from clpoison.data.shards.shard_batches import StreamingCaptionBatches
from clpoison.data.shards.shard_set import StreamingCaptionSet
from clpoison.defenses.safeclip.safeclip import SafeCLIP, SafeCLIPParams
from clpoison.defenses.safeclip.safeclip_groups import (digest_keys, group_min, group_stats, pair_groups,
                                                        row_digests)
from clpoison.defenses.safeclip.safeclip_split import FilterSchedule, safeclip_split
from clpoison.errors import ConfigError
from clpoison.experiments.config import build_config
from clpoison.methods.build import build_method

from test_clip_webcaps import TINY
from test_shard_stream import write_shards

CPU = torch.device("cpu")


def test_row_digests_are_exact_keys():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (6, 3, 40, 40), dtype=torch.uint8, generator=g)  # 4,800 values: several chunks
    x[3] = x[0]
    x[4] = x[0]
    x[4, 2, 39, 39] ^= 1  # one pixel, one bit apart
    d = row_digests(x, 1)
    assert d.dtype == torch.float32 and d.shape == (6, 2)
    assert torch.equal(d, d.round()) and float(d.max()) < 2 ** 24  # integers, exact in float32
    keys = digest_keys(d.numpy())
    assert keys[3] == keys[0] and len(set(keys.tolist())) == 5
    assert not torch.equal(row_digests(x, 2), d)  # another seed, another hash
    tokens = digest_keys(row_digests(torch.tensor([[5, 9, 2, 0], [5, 9, 2, 0], [9, 5, 2, 0]]), 2).numpy())
    assert tokens[0] == tokens[1] != tokens[2]  # the same caption; the same tokens in another order


def test_groups_are_components_of_shared_keys_and_common_keys_link_nothing():
    images = np.array([1, 2, 1, 3, 4, 5, 6, 7])
    captions = np.array([10, 11, 12, 11, 13, 14, 14, 14])
    labels = pair_groups(images, captions, max_size=64)
    assert labels.tolist() == [0, 1, 0, 1, 2, 3, 3, 3]  # 0~2 (image), 1~3 (caption), 5~6~7 (caption)
    assert group_stats(labels) == {"grouped_pairs": 7, "groups": 3, "largest_group": 3}
    capped = pair_groups(images, captions, max_size=2)  # caption 14 is held by 3 pairs: too common to link
    assert capped.tolist() == [0, 1, 0, 1, 2, 3, 4, 5]
    chain = pair_groups(np.array([1, 1, 2, 2]), np.array([7, 8, 8, 9]))  # image, caption, image: one component
    assert set(chain.tolist()) == {0}
    assert group_min(np.array([0.9, 0.1, 0.5, 0.7]), np.array([0, 0, 1, 1])).tolist() == [0.1, 0.1, 0.5, 0.5]
    with pytest.raises(ConfigError, match="group_max_size"):
        SafeCLIPParams(group_max_size=1)


def test_a_victims_pairs_are_split_together():
    rng = np.random.default_rng(0)
    sims = np.concatenate([rng.normal(0.6, 0.08, 900), rng.normal(0.1, 0.05, 95), [0.7, 0.65, 0.62, 0.6, 0.05]])
    victim = np.arange(995, 1000)  # one image with 5 captions: 4 look aligned, one does not
    groups = np.arange(1000)
    groups[victim] = 995
    _, sched = safeclip_split(sims, 0, None, step=0.05, cap=0.85)
    alone, _ = safeclip_split(sims, 3, sched, step=0.05, cap=0.85)
    together, _ = safeclip_split(sims, 3, FilterSchedule(sched.first_ratio, 0.05, 0.85), groups=groups)
    assert np.isin(victim[:4], alone.safe).all()  # scored one by one, the aligned-looking pairs train as safe
    assert np.isin(victim, together.risky).all() and len(together.safe) == len(alone.safe)
    assert together.similarities[995] == 0.7 and np.array_equal(together.p_clean, alone.p_clean)  # own scores kept


def _tiny_clip(tok):
    torch.manual_seed(0)
    return build_method("clip", {"embed_dim": 16, "text_width": 16, "text_layers": 1, "text_heads": 2,
                                 "context_length": 24, "vocab_size": 300}, {"arch": "convnet", "width": 4}, tokenizer=tok)


def test_keys_are_the_same_in_memory_and_streamed(tmp_path):
    write_shards(tmp_path / "train", shards=3, per=8)
    resident, _ = read_caption_shards(tmp_path / "train", image_size=16)
    tok = CaptionTokenizer.train(flat_captions(resident), 300)
    params = SafeCLIPParams(group_duplicates=True, eval_batch_size=5)
    streamed = StreamingCaptionBatches(StreamingCaptionSet(tmp_path / "train", 16), tok, 24, 8, CPU, 0,
                                       CaptionImageAugment(16), workers=0, shuffle_buffer=4)
    _, s = SafeCLIP(params).wrap_training(_tiny_clip(tok), streamed, TrainingContext(seed=0))
    cb = CaptionBatches(resident, tok.encode(flat_captions(resident), 24), 8, CPU, 0, CaptionImageAugment(16))
    _, m = SafeCLIP(params).wrap_training(_tiny_clip(tok), cb, TrainingContext(train_set=resident, seed=0))
    ks, km = s.pair_keys(), m.pair_keys()
    assert all(np.array_equal(a, b) for a, b in zip(ks, km))
    assert len(set(km[0].tolist())) == len(set(km[1].tolist())) == 24  # all distinct here
    # in memory, a repeated image and a repeated caption get one key each
    imgs = resident.images.clone()
    imgs[5] = imgs[2]
    caps = [list(c) for c in resident.captions]
    caps[7] = list(caps[1])
    ds = CaptionDataset(imgs, caps)
    cb2 = CaptionBatches(ds, tok.encode(flat_captions(ds), 24), 8, CPU, 0, CaptionImageAugment(16))
    _, m2 = SafeCLIP(params).wrap_training(_tiny_clip(tok), cb2, TrainingContext(train_set=ds, seed=0))
    ki, kc = m2.pair_keys()
    assert ki[5] == ki[2] and kc[7] == kc[1] and len(set(ki.tolist())) == len(set(kc.tolist())) == 23
    labels = pair_groups(ki, kc)
    assert labels[5] == labels[2] and labels[7] == labels[1] and group_stats(labels)["grouped_pairs"] == 4


@pytest.mark.slow
def test_targeted_run_keeps_each_victims_pairs_together(tmp_path, capfd):
    from clpoison.defenses.safeclip.safeclip_trace import read_trace
    from clpoison.experiments.runner import run_experiment

    tiny = [o for o in TINY if not o.startswith(("attack.params.poison_rate", "attack.params.zscore"))]
    cfg = build_config({"preset": "carlini-targeted-small"},
                       [*tiny, "attack.params.num_targets=4", "attack.params.pairs_per_target=3",
                        "defense.params.group_duplicates=true", "defense.params.update_filter_ratio=0.3"])
    res = run_experiment(cfg, tmp_path / "run")
    victims = [v["added_indices"] for v in json.loads((tmp_path / "run" / "manifest.json").read_text())["targets"]["victims"]]
    assert len(victims) == 4 and all(len(v) == 3 for v in victims)
    first = next(h for h in res["history"] if "safeclip_grouped_pairs" in h)
    assert first["safeclip_grouped_pairs"] >= 12 and res["defense"]["duplicate_groups"]["grouped_pairs"] >= 12
    trace = read_trace(tmp_path / "run")
    poisons = trace[0]["poisons"]
    assert sorted(poisons) == sorted(i for v in victims for i in v)
    for e in trace:  # every victim's 3 pairs: all risky or all safe, in the warm-up trace and in every split
        risky = dict(zip(poisons, e["risky"]))
        assert all(len({risky[i] for i in v}) == 1 for v in victims), e["epoch"]
    assert "pairs share an image or a caption with another pair" in capfd.readouterr().err


def test_veto_only_shrinks_the_safe_set():
    """group_rule veto: the ranking is each pair's own; a pair leaves the safe cut when a pair of its group is outside
    it, and no pair enters it (min, by contrast, fills the cut back up from lower down)."""
    rng = np.random.default_rng(0)
    sims = np.concatenate([rng.normal(0.6, 0.08, 900), rng.normal(0.1, 0.05, 95), [0.7, 0.65, 0.62, 0.6, 0.05]])
    groups = np.arange(1000)
    groups[995:] = 995
    _, sched = safeclip_split(sims, 0, None, step=0.05, cap=0.85)
    alone, _ = safeclip_split(sims, 3, FilterSchedule(sched.first_ratio, 0.05, 0.85))
    vetoed, _ = safeclip_split(sims, 3, FilterSchedule(sched.first_ratio, 0.05, 0.85), groups=groups, group_rule="veto")
    assert np.isin(np.arange(995, 1000), vetoed.risky).all()
    assert set(vetoed.safe.tolist()) == set(alone.safe.tolist()) - set(range(995, 1000))
    assert vetoed.ratio == pytest.approx(alone.ratio - 4 / 1000)
    with pytest.raises(ConfigError, match="group_rule"):
        SafeCLIPParams(group_rule="max")


def test_veto_refill_keeps_the_veto_and_tops_up_with_ungrouped_pairs():
    """group_rule veto_refill: the vetoed safe set, plus the best-ranked pairs that share nothing, up to the epoch's
    ratio — never a grouped pair (a poison sharing its image or caption stays out), and at the threshold cut of the
    first filtering epoch it is the veto."""
    rng = np.random.default_rng(2)
    n = 1000
    sims = np.concatenate([rng.normal(0.6, 0.08, 900), rng.normal(0.1, 0.05, 100)])
    sims[[3, 10, 11]] = 0.9       # well aligned: inside every cut on their own
    groups = np.arange(n)
    groups[[3, 950]] = 3          # a well-aligned pair grouped with a badly aligned one: vetoed
    groups[[10, 11, 960]] = 10
    groups[[970, 971]] = 970      # a badly aligned group: never refilled
    sched = FilterSchedule(0.5, 0.05, 0.85)
    vetoed, _ = safeclip_split(sims, 4, sched, groups=groups, group_rule="veto")
    filled, _ = safeclip_split(sims, 4, sched, groups=groups, group_rule="veto_refill")
    alone, _ = safeclip_split(sims, 4, sched)
    assert set(vetoed.safe.tolist()) < set(filled.safe.tolist())
    assert len(filled.safe) == len(alone.safe) == int(sched.ratio(4) * n)  # back to the ratio
    added = np.setdiff1d(filled.safe, vetoed.safe)
    assert len(added) == 3 and not np.isin(added, [3, 950, 10, 11, 960, 970, 971]).any()
    outside = np.setdiff1d(np.arange(n), alone.safe)  # the refill takes the best-ranked of the ungrouped rest
    order = outside[np.argsort(-sims[outside], kind="stable")]
    assert set(added.tolist()) == set([i for i in order if i not in (950, 960, 970, 971)][:3])
    first_v, sv = safeclip_split(sims, 0, None, groups=groups, group_rule="veto")
    first_r, sr = safeclip_split(sims, 0, None, groups=groups, group_rule="veto_refill")
    assert np.array_equal(first_v.safe, first_r.safe) and sv.first_ratio == sr.first_ratio
    SafeCLIPParams(group_rule="veto_refill")


def test_the_schedule_starts_from_the_cut_before_a_veto():
    """min: the first ratio is the grouped threshold cut; veto: the cut of the pairs' own posteriors (the veto only
    removes pairs from each epoch's cut, it does not slow the schedule)."""
    rng = np.random.default_rng(1)
    sims = np.concatenate([rng.normal(0.6, 0.05, 90), rng.normal(0.1, 0.05, 10)])
    groups = np.arange(100)
    groups[[0, 1, 95]] = 0  # two well-aligned pairs share a key with a badly aligned one
    own, _ = safeclip_split(sims, 0, None)
    m, ms = safeclip_split(sims, 0, None, groups=groups, group_rule="min")
    v, vs = safeclip_split(sims, 0, None, groups=groups, group_rule="veto")
    assert np.isin([0, 1], own.safe).all() and np.isin([0, 1, 95], m.risky).all() and np.isin([0, 1, 95], v.risky).all()
    assert ms.first_ratio == m.ratio == own.ratio - 0.02
    assert vs.first_ratio == own.ratio and v.ratio == own.ratio - 0.02
