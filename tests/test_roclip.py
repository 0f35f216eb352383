"""RoCLIP: the pool returns the true nearest neighbour, is queried before it is updated, is FIFO, lives in the
checkpoint (exact resume), and an end-to-end run through the CLI alternates plain and matching epochs."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from clpoison.defenses.roclip import RoCLIP, RoCLIPMethod, RoCLIPParams, TextPool, roclip_matched_loss
from clpoison.errors import ConfigError
from clpoison.methods.clip import clip_loss
from cli_inprocess import clpoison_here
from interrupt import interrupt_and_resume

def unit(n: int, d: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


def brute_force_nearest(q: torch.Tensor, bank: torch.Tensor) -> list[int]:
    out = []
    for i in range(len(q)):
        qi = q[i].double() / q[i].double().norm()
        sims = [float(qi @ bank[j].double()) for j in range(len(bank))]
        out.append(max(range(len(bank)), key=lambda j: sims[j]))
    return out


def test_pool_returns_the_true_nearest_neighbour():
    pool = TextPool(50, 8, seed=3)
    assert torch.allclose(pool.bank.norm(dim=1), torch.ones(50), atol=1e-5)  # random unit vectors at the start
    pool.push(unit(30, 8, 1))
    q = torch.randn(20, 8, generator=torch.Generator().manual_seed(2)) * 3  # unnormalised queries
    want = brute_force_nearest(q, pool.bank)
    assert pool.nearest_index(q).tolist() == want
    assert torch.equal(pool.nearest(q), pool.bank[want])


def test_pool_is_fifo():
    pool = TextPool(5, 3, seed=0)
    a, b = unit(3, 3, 1), unit(4, 3, 2)
    pool.push(a)
    assert torch.allclose(pool.bank[:3], a) and int(pool.ptr) == 3
    pool.push(b)  # wraps: rows 3, 4, 0, 1
    assert torch.allclose(pool.bank[3:5], b[:2]) and torch.allclose(pool.bank[:2], b[2:])
    assert torch.allclose(pool.bank[2], a[2]) and int(pool.ptr) == 2
    big = unit(12, 3, 4)
    pool.push(big)  # more than the pool: the last 5 stay
    got = sorted(map(tuple, pool.bank.tolist()))
    want = sorted(map(tuple, big[-5:].tolist()))
    assert all(math.isclose(x, y, abs_tol=1e-6) for g, w in zip(got, want) for x, y in zip(g, w))


class TinyCLIPModel(torch.nn.Module):
    """Embeddings are the (normalised) inputs: enough to check what the loss scores against what."""

    def __init__(self):
        super().__init__()
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(10.0)))

    def scale(self):
        return self.logit_scale.exp()

    def forward(self, images, tokens):
        return F.normalize(images, dim=1), F.normalize(tokens, dim=1), self.scale()


class TinyCLIP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.model = TinyCLIPModel()


def test_pool_is_queried_before_it_is_updated():
    pool = TextPool(16, 4, seed=1)
    m = RoCLIPMethod(TinyCLIP(), pool)
    img, txt = unit(6, 4, 5), unit(6, 4, 6)
    before = pool.bank.clone()
    batch = {"images": img, "tokens": txt, "roclip_matching": True}
    loss, logs, aux = m.loss(batch)
    assert torch.equal(pool.bank, before)  # the loss is pure
    # the images are scored against their nearest *old* pool entries, never against this batch's own captions
    want = clip_loss(img, before[brute_force_nearest(img, before)], torch.tensor(10.0))
    assert abs(float(loss.detach()) - float(want)) < 1e-5 and logs["roclip_matching"] == 1.0
    assert abs(float(roclip_matched_loss(img, pool, torch.tensor(10.0))) - float(want)) < 1e-5
    m.update_state(aux)  # then the batch's captions enter the pool
    assert torch.allclose(pool.bank[:6], txt) and torch.equal(pool.bank[6:], before[6:])
    # a plain epoch: the CLIP loss on the pairs, the pool untouched
    plain, logs, aux = m.loss({**batch, "roclip_matching": False})
    assert abs(float(plain.detach()) - float(clip_loss(img, txt, torch.tensor(10.0)))) < 1e-5 and aux == {}
    # the text tower gets no gradient from a matching batch (pool entries are detached)
    t = txt.clone().requires_grad_()
    loss, _, _ = m.loss({"images": img, "tokens": t, "roclip_matching": True})
    loss.backward()
    assert t.grad is None or torch.all(t.grad == 0)


def test_matching_schedule_and_params():
    p = RoCLIPParams(break_epoch=2)
    assert [p.matching(e) for e in range(6)] == [False, True, False, True, False, True]  # epochs 2, 4, 6 (from 1)
    assert [RoCLIPParams(break_epoch=3).matching(e) for e in range(6)] == [False, False, True, False, False, True]
    with pytest.raises(ConfigError, match="pool_size"):
        RoCLIPParams(pool_size=0)


OV = ["data.train_limit=256", "data.test_limit=64", "train.batch_size=64", "eval.random_init_control=false",
      "attack.params.poison_rate=0.05", "train.progress=false", "defense.name=roclip", "defense.params.pool_size=96"]


@pytest.mark.slow
def test_pool_is_in_the_checkpoint_and_resume_is_exact(tmp_path, monkeypatch):
    from clpoison.experiments.config import build_config
    from clpoison.experiments.runner import run_experiment

    cfg = build_config({"preset": "carlini-backdoor-small"}, ["train.epochs=4", *OV])
    straight = run_experiment(cfg, tmp_path / "a")
    ckpt = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    bank = ckpt["extra_state"]["roclip_pool"]["bank"]
    assert bank.shape == (96, 128) and int(ckpt["extra_state"]["roclip_pool"]["ptr"]) == (2 * 4 * 64) % 96
    assert not any(k.startswith("pool") for k in ckpt["model"])  # the model state dict stays the CLIP's

    # the resumed run must restore the pool: a fresh random pool would change epoch 4's matches
    resumed = interrupt_and_resume(monkeypatch, RoCLIP, cfg, tmp_path / "b", 4)  # after matching epoch 4
    key = ("loss", "roclip_matching")
    assert [[h[k] for k in key] for h in resumed["history"]] == [[h[k] for k in key] for h in straight["history"]]
    assert resumed["metrics"]["asr"] == straight["metrics"]["asr"]
    assert resumed["metrics"]["zeroshot_top1"] == straight["metrics"]["zeroshot_top1"]
    ck2 = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert torch.equal(ck2["extra_state"]["roclip_pool"]["bank"], bank)


@pytest.mark.slow
def test_roclip_run_through_the_cli(tmp_path, capsys):
    """Through the CLI in this process (``clpoison.cli.main``): no command here needs a process of its own."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("preset: carlini-targeted-small\ndefense:\n  name: roclip\n  params: {pool_size: 128, break_epoch: 2}\n")
    out = tmp_path / "run"
    r = clpoison_here(capsys, "run", cfg, "train.epochs=2", "data.train_limit=300", "data.test_limit=64",
                      "train.batch_size=64", "eval.random_init_control=false", "--out", out, "--no-progress")
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((out / "results.json").read_text())
    assert [h["roclip_matching"] for h in res["history"]] == [False, True]
    assert res["defense"]["roclip_pool_size"] == 128 and res["defense"]["roclip_cross_aug"] is True
    assert "targeted_successes" in res["metrics"] and 0 <= res["metrics"]["zeroshot_top1"] <= 1
    log = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert {x.get("roclip_matching") for x in log if "step" in x and "event" not in x} <= {0.0, 1.0}
    r = clpoison_here(capsys, "run", cfg, "defense.params.break_epoch=0", "--out", tmp_path / "x")
    assert r.returncode == 2 and "break_epoch=0" in r.stderr
