"""SafeCLIP: GMM split, growing safe set, phases/losses/learning rates, EDA, scan ranking (fast unit tests)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from clpoison.contexts import TrainingContext
from clpoison.data.captions.caption_loader import CaptionBatches, CaptionImageAugment, flat_captions
from clpoison.data.captions import CaptionDataset
from clpoison.data.captions.eda import eda_views
from clpoison.data.captions.tokenizer import CaptionTokenizer
from clpoison.defenses import DEFENSES
from clpoison.defenses.safeclip.safeclip import SafeCLIPParams
from clpoison.audit.data_scan import scan_table, score_pairs
from clpoison.defenses.safeclip.safeclip_split import (FilterSchedule, gmm_clean_posterior, poison_precision_recall,
                                              safeclip_split, split_by_threshold)
from clpoison.engine.trainer import TrainConfig, Trainer
from clpoison.errors import ConfigError
from clpoison.methods.clip import CLIP, CLIPParams
from clpoison.models import build_backbone


def mixture(n_clean=900, n_poison=100, seed=0):
    rng = np.random.default_rng(seed)
    sims = np.concatenate([rng.normal(0.55, 0.06, n_clean), rng.normal(0.05, 0.06, n_poison)])
    perm = rng.permutation(len(sims))
    poisons = np.flatnonzero(perm >= n_clean)
    return sims[perm], poisons


def test_gmm_split_recovers_poisons():
    sims, poisons = mixture()
    p = gmm_clean_posterior(sims)
    safe, risky = split_by_threshold(p, 0.9)
    pr = poison_precision_recall(risky, poisons)
    assert pr["poison_recall_risky"] >= 0.98 and pr["poison_precision_risky"] >= 0.8
    assert not np.isin(poisons, safe).any()


def test_safe_fraction_schedule():
    sims, _ = mixture(700, 300)
    split, sched = safeclip_split(sims, 0, None)
    assert split.rule == "threshold"
    assert np.all(gmm_clean_posterior(sims)[split.safe] >= 0.9)
    r0 = split.ratio
    assert 0.5 < r0 < 0.8
    for k in range(1, 40):
        s, _ = safeclip_split(sims, k, sched)
        want = min(r0 + 0.01 * k, 0.85)
        assert s.rule == "ratio" and abs(s.ratio - int(np.floor(want * len(sims) + 1e-9)) / len(sims)) < 1e-9
    assert FilterSchedule(0.84).ratio(1) == 0.85 and FilterSchedule(0.84).ratio(10) == 0.85
    assert FilterSchedule(0.30).ratio(2) == 0.32


def test_cap_from_gmm_follows_the_clean_component_weight():
    """cap_from_gmm: the safe fraction stops at the clean component's weight (~0.6 here), under the fixed cap; the
    fit's statistics are recorded; without the option the paper's 0.85 cap applies."""
    sims, _ = mixture(600, 400)
    split, sched = safeclip_split(sims, 0, None, step=0.05, cap=0.85, cap_from_gmm=True)
    w = split.gmm["clean_weight"]
    assert abs(w - 0.6) < 0.05 and split.gmm["separation"] > 3 and sched.data_cap == w
    late, _ = safeclip_split(sims, 20, sched, step=0.05, cap=0.85, cap_from_gmm=True)
    assert abs(late.ratio - int(np.floor(w * len(sims) + 1e-9)) / len(sims)) < 1e-9
    fixed, sched2 = safeclip_split(sims, 0, None, step=0.05, cap=0.85)
    assert sched2.data_cap is None and safeclip_split(sims, 20, sched2, step=0.05, cap=0.85)[0].ratio == 0.85


def test_eda_views_are_frozen_and_change_captions():
    caps = ["a blurry photo of a dog on the grass", "my truck this morning"] * 10
    v1, v2 = eda_views(caps, seed=3)
    assert (v1, v2) == tuple(eda_views(caps, seed=3))
    assert any(a != c.replace(",", "") for a, c in zip(v1, caps))


def tiny_setup(n=64, batch=16):
    torch.manual_seed(0)
    caps = [[f"a photo of a {c}"] for c in ["cat", "dog", "truck", "ship"] * (n // 4)]
    ds = CaptionDataset(torch.randint(0, 255, (n, 3, 16, 16), dtype=torch.uint8), caps)
    tok = CaptionTokenizer.train(flat_captions(ds), 280)
    p = CLIPParams(embed_dim=16, text_width=16, text_layers=1, text_heads=2, context_length=12, vocab_size=280)
    clip = CLIP(build_backbone("convnet", 8, 1) if "convnet" in __import__("clpoison.models", fromlist=["BACKBONES"]).BACKBONES
                else build_backbone("resnet10", 8, 2), p, tok)
    cb = CaptionBatches(ds, tok.encode(flat_captions(ds), 12), batch, torch.device("cpu"), 0, CaptionImageAugment(16))
    return ds, clip, cb


def test_phases_losses_and_learning_rates(tmp_path):
    ds, clip, cb = tiny_setup()
    params = SafeCLIPParams(inmodal_epochs=1, crossmodal_epochs=1, in_lr=1e-3, cross_lr=2e-3, filter_lr=5e-6,
                            warmup_epochs=0.5, image_aug="clip", cross_aug=False, eval_batch_size=32)
    d = DEFENSES.get("safeclip")(params)
    method, batches = d.wrap_training(clip, cb, TrainingContext(train_set=ds, seed=0, manifest={"poisoned_indices": [0, 1]},
                                                                out_dir=tmp_path))
    cfg = TrainConfig(epochs=4, batch_size=16, optimizer="adamw", lr=1e-3, lr_scaling="none", warmup_epochs=0,
                      progress=False, checkpoint_every=0, log_every=1, amp="off", channels_last="off")
    hooks = d.training_hooks()
    trainer = Trainer(method, batches, cfg, torch.device("cpu"), tmp_path, schedule=hooks.schedule,
                      on_epoch_start=hooks.epoch_start)
    seen = []
    orig = method.loss

    def spy(batch):
        seen.append((trainer.epoch, batch["phase"], trainer.optimizer.param_groups[0]["lr"], len(batch["index"])))
        return orig(batch)

    method.loss = spy
    hist = trainer.fit(resume=False)
    assert [h["safeclip_phase"] for h in hist] == ["inmodal", "crossmodal", "filtered", "filtered"]
    e0 = [s for s in seen if s[0] == 0]
    assert all(ph == "inmodal" for _, ph, _, _ in e0)
    assert e0[0][2] == pytest.approx(1e-3 * 1 / 2)  # warm-up: half an epoch = 2 steps
    assert all(s[1] == "clip" and s[2] == pytest.approx(5e-6) for s in seen if s[0] == 1)
    for e in (2, 3):
        ph = [s[1] for s in seen if s[0] == e]
        assert ph == sorted(ph, key=lambda x: x != "inmodal")  # risky (unimodal) pass first, then safe (CLIP)
        assert sum(s[3] for s in seen if s[0] == e) <= len(ds)
        for _, kind, lr, _ in (s for s in seen if s[0] == e):
            base = 1e-3 if kind == "inmodal" else 2e-3
            assert 0 < lr <= base + 1e-12, [s for s in seen if s[0] >= 2]
    assert hist[2]["safeclip_rule"] == "threshold" and hist[3]["safeclip_rule"] == "ratio"
    assert "safeclip_poison_recall_risky" in hist[2]
    assert (tmp_path / "safeclip" / "similarity_epoch003.png").exists()
    # the checkpointable state is the CLIP's own
    assert set(method.state_dict()) == set(clip.state_dict())


class Rigged(nn.Module):
    """Image embedding = mean colour; caption embedding = the colour word it contains."""

    def __init__(self, tok: CaptionTokenizer):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.table = torch.zeros(tok.vocab_size, 3)
        for j, word in enumerate(["red", "green", "blue"]):
            ids = tok.encode([word], 8)[0]
            self.table[ids[1]] [j] = 1.0

    def encode_image(self, x):
        return nn.functional.normalize(x.mean((2, 3)) + 1e-3, dim=1)

    def encode_text(self, t):
        return nn.functional.normalize(self.table[t].sum(1) + 1e-3, dim=1)


def test_scan_ranks_mismatched_pairs_first():
    rng = np.random.default_rng(0)
    n, colours = 120, ["red", "green", "blue"]
    lab = rng.integers(0, 3, n)
    imgs = torch.zeros(n, 3, 8, 8, dtype=torch.uint8)
    imgs[torch.arange(n), torch.as_tensor(lab)] = 255
    bad = np.array([3, 17, 40, 77, 101])
    caps = [[f"a {colours[(l + 1) % 3] if i in bad else colours[l]} thing"] for i, l in enumerate(lab)]
    ds = CaptionDataset(imgs, caps)
    tok = CaptionTokenizer.train(["red", "green", "blue", "a thing"] * 20 + flat_captions(ds), 280)
    sims, owner, texts = score_pairs(Rigged(tok), tok, ds, lambda x: x.float() / 255, 8, torch.device("cpu"))
    csv_text, summary = scan_table(sims, owner, texts, bad)
    rows = [r.split(",") for r in csv_text.strip().splitlines()[1:]]
    assert sorted(int(r[1]) for r in rows[:5]) == sorted(bad.tolist())
    assert summary["roc_auc"] == pytest.approx(1.0) and summary["recall"] == 1.0


def test_clean_similarity_view_scores_stored_images_and_written_captions():
    """similarity_view=clean: the training pass scores each pair exactly as `clpoison scan` does (no augmentation,
    the caption as written), so the mismatched pairs come out lowest; official uses the augmented view + EDA."""
    rng = np.random.default_rng(1)
    n, colours = 48, ["red", "green", "blue"]
    lab = rng.integers(0, 3, n)
    imgs = torch.zeros(n, 3, 8, 8, dtype=torch.uint8)
    imgs[torch.arange(n), torch.as_tensor(lab)] = 255
    bad = np.array([2, 9, 30])
    caps = [[f"a {colours[(l + 1) % 3] if i in bad else colours[l]} thing"] for i, l in enumerate(lab)]
    ds = CaptionDataset(imgs, caps)
    tok = CaptionTokenizer.train(["red", "green", "blue", "a thing"] * 20 + flat_captions(ds), 280)
    aug = CaptionImageAugment(8, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    cb = CaptionBatches(ds, tok.encode(flat_captions(ds), 8), 16, torch.device("cpu"), 0, aug)

    class Clip:  # the attributes wrap_training reads
        modality, tokenizer = "image-text", tok
        params = CLIPParams(embed_dim=3, context_length=8)

    model = Rigged(tok)
    sims = {}
    for view in ("clean", "official"):
        d = DEFENSES.get("safeclip")(SafeCLIPParams(similarity_view=view, image_aug="clip", eda_alpha=0.5))
        _, b = d.wrap_training(Clip(), cb, TrainingContext(train_set=ds, seed=0))
        sims[view] = b.similarities(model, epoch=0)
    ref, _, _ = score_pairs(model, tok, ds, lambda x: x.float() / 255, 8, torch.device("cpu"))
    assert np.allclose(sims["clean"], ref, atol=1e-5)
    assert set(np.argsort(sims["clean"])[:3].tolist()) == set(bad.tolist())
    assert not np.allclose(sims["official"], ref, atol=1e-3)  # EDA captions / augmented views differ
    with pytest.raises(ConfigError, match="similarity_view"):
        SafeCLIPParams(similarity_view="raw")


def test_cap_excess_warns_when_the_safe_set_outgrows_the_clean_component():
    """The defender-visible warning: a safe set larger than the GMM's clean weight (+5 %) names the fix; a safe set
    inside it, or a split without a fit, says nothing."""
    from clpoison.defenses.safeclip.safeclip_split import Split, cap_excess

    rng = np.random.default_rng(0)
    sims = np.concatenate([rng.normal(0.6, 0.05, 500), rng.normal(0.1, 0.05, 500)])  # clean weight ≈ 0.5
    from clpoison.defenses.safeclip.safeclip_split import gmm_fit

    p, stats = gmm_fit(sims)
    empty = np.array([], dtype=np.int64)
    over = cap_excess(Split(empty, empty, 0.70, p, sims, "ratio", stats))
    assert over is not None and "70%" in over and "cap_filter_ratio" in over and "cap_from_gmm" in over
    assert cap_excess(Split(empty, empty, 0.52, p, sims, "ratio", stats)) is None
    assert cap_excess(Split(empty, empty, 0.99, p, sims, "ratio (scores reused)")) is None
