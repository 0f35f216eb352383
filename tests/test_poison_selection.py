"""No-label poison selection: each rule against a naive loop reference, chunked = dense, the k-means rule, purity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clpoison.attacks.nlb.poison_selection import contrastive_scores, nlb_budget, purity, select
from clpoison.errors import ConfigError


def feats(n: int = 60, d: int = 6, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


def naive_scores(f: torch.Tensor, m: int, kind: str) -> list[float]:
    out = []
    for i in range(len(f)):
        sims = sorted((float(f[i].double() @ f[j].double()) for j in range(len(f))), reverse=True)
        pos, neg = sum(sims[:m]), sum(sims[m:2 * m])
        out.append({"con": pos - neg, "conp": pos / m, "conn": -neg}[kind])
    return out


@pytest.mark.parametrize("kind", ["con", "conp", "conn"])
def test_contrastive_rules_match_a_naive_loop(kind):
    f, m = feats(), 5
    got = contrastive_scores(f, m, kind, chunk=7)
    want = naive_scores(f, m, kind)
    assert np.allclose(got.numpy(), want, atol=1e-5)
    sel = select(kind, f, m)
    anchor = int(np.argmax(want))
    assert sel.anchor == anchor
    near = sorted(range(len(f)), key=lambda j: -float(f[anchor].double() @ f[j].double()))[:m]
    assert sel.indices.tolist() == sorted(near) and anchor in sel.indices.tolist()


def test_chunked_equals_dense():
    f, m = feats(500, 16, 1), 20
    dense = (f @ f.t()).topk(2 * m, dim=1).values
    want = dense[:, :m].sum(1) - dense[:, m:].sum(1)
    for chunk in (1, 33, 500, 4096):
        assert torch.allclose(contrastive_scores(f, m, "con", chunk), want, atol=1e-5)
    assert select("con", f, m, chunk=33).indices.tolist() == select("con", f, m, chunk=10_000).indices.tolist()


def test_kmeans_takes_the_first_members_of_the_smallest_cluster_that_fits():
    from sklearn.cluster import MiniBatchKMeans

    g = torch.Generator().manual_seed(0)
    centres = torch.eye(4)[:, :4] * 5
    sizes = [40, 15, 25, 8]
    x = torch.cat([c + 0.1 * torch.randn(n, 4, generator=g) for c, n in zip(centres, sizes)])
    f = F.normalize(x, dim=1)
    assign = MiniBatchKMeans(n_clusters=4, n_init="auto", random_state=0).fit_predict(f.numpy())
    counts = np.bincount(assign)
    for m in (10, 20):
        c = min((k for k in range(4) if counts[k] >= m), key=lambda k: (counts[k], k))
        sel = select("kmeans", f, m, n_clusters=4, seed=0)
        assert sel.info["cluster_size"] == counts[c] and sel.indices.tolist() == np.flatnonzero(assign == c)[:m].tolist()
    with pytest.raises(ConfigError, match="no k-means cluster"):
        select("kmeans", f, 50, n_clusters=4)


def test_random_target_purity_budget_and_bad_input():
    labels = torch.arange(100) % 10
    r = select("random", None, 10, n=100, seed=1)
    assert len(set(r.indices.tolist())) == 10 and r.indices.tolist() == sorted(r.indices.tolist())
    t = select("target", None, 8, labels=labels, target=3, seed=1)
    assert bool((labels[t.indices] == 3).all())
    assert purity(t.indices, labels) == (3, 1.0)
    rigged = torch.tensor([0, 1, 2, 3])
    assert purity(rigged, torch.tensor([5, 5, 5, 1, 0, 0])) == (5, 0.75)
    assert nlb_budget(0.6, None, 45_000, 10) == 2700 and nlb_budget(None, 7, 100, 10) == 7
    with pytest.raises(ConfigError, match="selection"):
        select("bogus", feats(), 3)
    with pytest.raises(ConfigError, match="budget"):
        select("random", None, 101, n=100)
    with pytest.raises(ConfigError, match="labels"):
        select("target", None, 3, labels=torch.full((10,), -1), target=0)
    with pytest.raises(ConfigError, match="2M"):
        select("con", feats(10), 6)
