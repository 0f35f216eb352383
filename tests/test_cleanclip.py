"""CleanCLIP: the loss equals a naive reference, the in-modal terms have the official direction and no same-view
negatives, the fine-tuning split never holds a poisoned row, and an end-to-end fine-tuning run through the CLI."""

from __future__ import annotations

import json
import math
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clpoison.contexts import FilterContext, TrainingContext
from clpoison.data.captions.caption_dataset import range_rows, untouched_rows
from clpoison.defenses.cleanclip import CleanCLIPParams
from clpoison.errors import ConfigError
from clpoison.methods.cleanclip_loss import cleanclip_loss, inmodal_loss
from clpoison.methods.simclr import nt_xent_loss

from cli_inprocess import clpoison_here



def unit(n: int, d: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


def naive_ce(rows: torch.Tensor, cols: torch.Tensor, s: float) -> float:
    """mean_i −log( exp(s·r_i·c_i) / Σ_j exp(s·r_i·c_j) ), j over the columns only."""
    total = 0.0
    for i in range(len(rows)):
        logits = [s * float(rows[i].double() @ cols[j].double()) for j in range(len(cols))]
        m = max(logits)
        total += -(logits[i] - m - math.log(sum(math.exp(v - m) for v in logits)))
    return total / len(rows)


def test_cleanclip_loss_matches_naive_reference():
    i, t, ia, ta = (unit(6, 8, k) for k in range(4))
    for s, wc, wi in ((1.0, 1.0, 1.0), (14.3, 1.0, 1.0), (50.0, 0.5, 2.0)):
        total, terms = cleanclip_loss(i, t, ia, ta, torch.tensor(s), wc, wi)
        clip = 0.5 * (naive_ce(i, t, s) + naive_ce(t, i, s))
        inmodal = 0.5 * (naive_ce(i, ia, s) + naive_ce(t, ta, s))
        assert abs(float(terms["clip"]) - clip) < 1e-4 * max(1, clip)
        assert abs(float(terms["inmodal"]) - inmodal) < 1e-4 * max(1, inmodal)
        assert abs(float(total) - (wc * clip + wi * inmodal)) < 1e-4 * max(1, float(total))


def test_inmodal_term_direction_and_no_same_view_negatives():
    """Rows are the original views, columns the augmented ones (official); the other *original* views are never
    negatives — unlike the reverse direction and NT-Xent, which the term must not equal."""
    z, za = unit(7, 5, 10), unit(7, 5, 11)
    s = 20.0
    got = float(inmodal_loss(z, za, torch.tensor(s)))
    assert abs(got - naive_ce(z, za, s)) < 1e-4 * max(1, got)
    assert abs(got - naive_ce(za, z, s)) > 1e-3  # not the reverse direction
    assert abs(got - float(nt_xent_loss(z, za, 1.0 / s))) > 1e-3  # not SimCLR's 2N-2 negatives
    # no same-view negatives: row i's term ignores z_k (k != i); the gradient w.r.t. z_k comes from row k alone
    zz = z.clone().requires_grad_()
    row0 = -F.log_softmax(s * zz[:1] @ za.t(), 1)[0, 0]
    (g,) = torch.autograd.grad(row0, zz)
    assert torch.all(g[1:] == 0)
    zz2 = z.clone().requires_grad_()
    (g2,) = torch.autograd.grad(inmodal_loss(zz2, za, torch.tensor(s)) * len(z), zz2)
    assert torch.allclose(g2[0], g[0], atol=1e-5)


def test_retokenized_batches_keep_this_process_share():
    """CleanCLIP re-tokenizes the run's batches with the checkpoint's tokenizer: same process share and order (a
    rank-0 / world-1 rebuild would hand every process the same batches under torchrun)."""
    from clpoison.data.captions.caption_loader import CaptionBatches
    from clpoison.data.captions import CaptionDataset

    ds = CaptionDataset(torch.zeros(16, 3, 4, 4, dtype=torch.uint8), [[f"c{i}"] for i in range(16)])
    tok = torch.arange(1, 17).view(16, 1)
    run = CaptionBatches(ds, tok, 2, torch.device("cpu"), seed=3, rank=1, world_size=2)
    again = run.with_tokens(ds, tok + 100)
    assert (again.source.rank, again.source.world_size, again.batch_size) == (1, 2, 2)
    got, want = list(again.epoch(1)), list(run.epoch(1))
    assert len(got) == len(want) == 4
    for g, w in zip(got, want):
        assert torch.equal(g["index"], w["index"]) and torch.equal(g["tokens"], w["tokens"] + 100)


def test_finetune_split_never_overlaps_poisoned_rows():
    poisons = np.array([3, 10, 11, 40, 99])
    # untouched: a seeded draw among the rows the attack did not touch, even when most rows are poisoned
    for seed in range(5):
        rows = untouched_rows(100, poisons, 60, seed, "defense.params.finetune_pairs")
        assert len(rows) == 60 and not np.isin(rows, poisons).any() and len(set(rows.tolist())) == 60
    heavy = np.arange(0, 100, 1)[np.arange(100) % 10 != 0]  # 90 of 100 rows poisoned
    rows = untouched_rows(100, heavy, 10, 0)
    assert sorted(rows.tolist()) == list(range(0, 100, 10))
    with pytest.raises(ConfigError, match="finetune_pairs=11 exceeds the 10"):
        untouched_rows(100, heavy, 11, 0, "defense.params.finetune_pairs")
    # range: a clean range is taken as given; a rigged range holding a poisoned row is refused with one line
    ok = range_rows(100, poisons, 12, 40)
    assert ok.tolist() == list(range(12, 40))
    with pytest.raises(ConfigError, match=r"holds 2 poisoned training row\(s\) \(first: 10\)") as e:
        range_rows(100, poisons, 5, 12, "defense.params.finetune_range")
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="needs defense.params.finetune_range"):
        CleanCLIPParams(finetune_split="range")


@pytest.mark.slow
def test_cleanclip_finetunes_a_poisoned_run_through_the_cli(tmp_path, capsys):
    clpoison = partial(clpoison_here, capsys)  # the CLI in this process: no command here needs its own
    small = ["data.train_limit=300", "data.test_limit=64", "eval.random_init_control=false",
             "attack.params.poison_rate=0.05", "--no-progress"]
    poisoned = tmp_path / "poisoned"
    (tmp_path / "p.yaml").write_text("preset: carlini-backdoor-small\n")
    r = clpoison("run", str(tmp_path / "p.yaml"), "train.epochs=1", "train.batch_size=64", *small, "--out", str(poisoned))
    assert r.returncode == 0, r.stderr[-2000:]
    man = json.loads((poisoned / "manifest.json").read_text())
    cfg = tmp_path / "cc.yaml"
    cfg.write_text("preset: carlini-backdoor-small\ntrain: {epochs: 2, batch_size: 32, lr: 4.0e-5, weight_decay: 0.1}\n"
                   f"defense:\n  name: cleanclip\n  params: {{checkpoint: {poisoned}, finetune_pairs: 100}}\n")
    out = tmp_path / "cc"
    r = clpoison("run", str(cfg), *small, "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((out / "results.json").read_text())
    d = res["defense"]
    assert d["name"] == "cleanclip" and d["cleanclip_finetune_pairs"] == 100 and d["cleanclip_poisons_in_split"] == 0
    assert d["cleanclip_poisoned_rows"] == len(man["poisoned_indices"]) == 15
    assert res["data"]["train_pairs"] == 100 and len(res["history"]) == 2
    assert "asr" in res["metrics"] and 0 <= res["metrics"]["zeroshot_top1"] <= 1
    assert all(math.isfinite(h["loss"]) for h in res["history"])
    # the fine-tuned model starts from the checkpoint: its tokenizer is the poisoned run's
    assert (out / "tokenizer.json").read_text() == (poisoned / "tokenizer.json").read_text()
    # a rigged range over a poisoned row: one line, exit 2, nothing written
    bad = man["poisoned_indices"][0]
    r = clpoison("run", str(cfg), *small, "defense.params.finetune_split=range",
                 f"defense.params.finetune_range=[{bad},{bad + 1}]", "--out", str(tmp_path / "bad"))
    assert r.returncode == 2 and "poisoned training row" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists() and not (tmp_path / "bad.partial").exists()
    r = clpoison("run", str(cfg), *small, "defense.params.checkpoint=" + str(tmp_path / "nope"), "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "does not exist" in r.stderr


def test_cleanclip_loads_the_checkpoint_weights_with_a_fresh_optimiser(tmp_path):
    """wrap_training hands the engine the checkpoint's CLIP (same weights) — the optimiser is the engine's new one."""
    from clpoison.defenses.cleanclip import CleanCLIP
    from clpoison.engine.trainer import Trainer
    from clpoison.experiments.config import build_config
    from clpoison.experiments.runner import run_experiment
    from clpoison.experiments.tasks import task_for

    ov = ["train.epochs=1", "data.train_limit=128", "data.test_limit=32", "train.batch_size=32",
          "eval.random_init_control=false", "eval.linear=false", "train.progress=false"]
    run_experiment(build_config({"preset": "clip-small"}, ov), tmp_path / "p")
    ckpt = torch.load(tmp_path / "p" / "checkpoint.pt", weights_only=True)
    cfg = build_config({"preset": "clip-small", "defense": {"name": "cleanclip", "params": {
        "checkpoint": str(tmp_path / "p"), "finetune_pairs": 64}}}, ov)
    task = task_for(cfg, torch.device("cpu"))
    splits = task.load()
    d = CleanCLIP(CleanCLIP.Params(**cfg.defense.params))
    train, info = d.filter(splits.train, FilterContext(manifest=None, seed=0))
    assert len(train) == 64 and info["cleanclip_poisons_in_split"] == 0
    method = task.build_method(train)
    m, b = d.wrap_training(method, task.batches(method, train, d), TrainingContext(
        train_set=train, seed=0, model=dict(vars(cfg.model)), load_method=task.method_from_checkpoint))
    for k, v in ckpt["model"].items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(m.state_dict()[k], v), k
    batch = next(iter(b.epoch(0)))
    assert {"images", "images_aug", "tokens", "tokens_aug"} <= set(batch)
    assert not torch.equal(batch["images"], batch["images_aug"])
    tr = Trainer(m, b, cfg.train, torch.device("cpu"))
    assert all(not s for s in tr.optimizer.state.values())
