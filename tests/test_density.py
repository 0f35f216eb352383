"""Local-density scores (clpoison.eval.density): equal to a naive reference, chunked == dense, batch neighbours, and a
planted tight cluster ranks first."""

from __future__ import annotations

import math

import pytest
import torch

from clpoison.errors import ConfigError
from clpoison.eval.density import DENSITY_SCORES, density_scores, knn


def naive(x: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
    """Straight from the definitions, one point at a time, float64."""
    x = x.double()
    n = len(x)
    a, nbrs = [], []
    for i in range(n):
        d = [(math.dist(x[i].tolist(), x[j].tolist()), j) for j in range(n) if j != i]
        d.sort()
        a.append([v for v, _ in d[: k + 1]])
        nbrs.append([j for _, j in d[:k]])
    kd = [r[k] for r in a]
    lid = [-k / sum(math.log(r[i] / r[k] + 1e-4) for i in range(k)) for r in a]
    slof = [sum(kd[i] / kd[j] for j in nbrs[i]) / k for i in range(n)]
    dao = [sum(lid[j] * math.log(kd[i] / kd[j]) for j in nbrs[i]) / k for i in range(n)]
    return {n_: torch.tensor(v, dtype=torch.float64) for n_, v in
            (("kdist", kd), ("lid", lid), ("slof", slof), ("dao", dao))}


def test_scores_equal_naive_reference():
    x = torch.randn(60, 5, generator=torch.Generator().manual_seed(0))
    got, want = density_scores(x, k=7), naive(x, 7)
    for name in DENSITY_SCORES:
        torch.testing.assert_close(got[name], want[name], rtol=1e-6, atol=1e-9)


def test_chunked_equals_dense():
    x = torch.randn(200, 16, generator=torch.Generator().manual_seed(1))
    dense = density_scores(x, k=8, chunk=len(x))
    for chunk in (1, 7, 64):
        for name, v in density_scores(x, k=8, chunk=chunk).items():
            torch.testing.assert_close(v, dense[name], rtol=0, atol=1e-12)
    d1, i1 = knn(x, 8, chunk=13)
    d2, i2 = knn(x, 8, chunk=200)
    assert torch.equal(i1, i2) and torch.equal(d1, d2)


def test_batch_neighbours_score_each_batch_on_its_own():
    x = torch.randn(100, 4, generator=torch.Generator().manual_seed(2))
    got = density_scores(x, k=5, batch=50, seed=3)
    perm = torch.randperm(100, generator=torch.Generator().manual_seed(3))
    for part in torch.tensor_split(perm, 2):
        for name, v in naive(x[part], 5).items():
            torch.testing.assert_close(got[name][part], v, rtol=1e-6, atol=1e-9)
    assert not torch.allclose(got["kdist"], density_scores(x, k=5)["kdist"])  # a different pool, other values


def test_planted_tight_cluster_ranks_first():
    """A few near-identical points far from a spread-out bulk (fewer than k: the isolated group of the paper's low
    poison rates) get the highest k-distance, SLOF and DAO; a group larger than k is dense instead: lowest k-distance."""
    g = torch.Generator().manual_seed(4)
    bulk = torch.randn(300, 8, generator=g)
    x = torch.cat([bulk, 6.0 + 0.01 * torch.randn(10, 8, generator=g)])
    for name, v in density_scores(x, names=("kdist", "slof", "dao"), k=16).items():
        assert set(v.argsort(descending=True)[:10].tolist()) == set(range(300, 310)), name
    x = torch.cat([bulk, 0.01 * torch.randn(40, 8, generator=g)])
    assert set(density_scores(x, names=("kdist",), k=16)["kdist"].argsort()[:40].tolist()) == set(range(300, 340))


def test_lid_estimates_intrinsic_dimension():
    """Points on a 2-D plane inside 8-D space have LID near 2, points filling 8-D near 8."""
    g = torch.Generator().manual_seed(5)
    flat = torch.cat([torch.rand(2000, 2, generator=g), torch.zeros(2000, 6)], 1)
    full = torch.rand(2000, 8, generator=g)
    assert abs(density_scores(flat, names=("lid",), k=32)["lid"].median().item() - 2) < 0.5
    assert density_scores(full, names=("lid",), k=32)["lid"].median().item() > 5


def test_bad_settings_are_one_line_errors():
    x = torch.randn(10, 3)
    with pytest.raises(ConfigError, match="too small for k"):
        density_scores(x, k=32)
    with pytest.raises(ConfigError, match="neighbour-batch"):
        density_scores(torch.randn(100, 3), k=8, batch=5)
    with pytest.raises(ConfigError, match="unknown density score"):
        density_scores(torch.randn(100, 3), names=("nope",), k=8)


def test_scan_table_with_several_scores():
    """The first score ranks (a density score: highest first), each score gets its own ROC-AUC / top-k / precision /
    recall, and the GMM threshold applies to the similarity only."""
    import numpy as np

    from clpoison.defenses.safeclip_scan import scan_table

    rng = np.random.default_rng(0)
    n = 50
    kd = rng.random(n)
    kd[[3, 9]] = 5.0  # poisons: highest k-distance
    sim = rng.random(n)  # uninformative similarity
    owner, texts = np.arange(n), [f"c{i}" for i in range(n)]
    text, s = scan_table({"kdist": kd, "similarity": sim}, owner, texts, np.array([3, 9]), top_k=2)
    rows = [r.split(",") for r in text.splitlines()]
    assert rows[0][:5] == ["rank", "index", "caption_index", "kdist", "similarity"] and "p_clean" in rows[0]
    assert {int(rows[1][1]), int(rows[2][1])} == {3, 9}
    assert s["scores"]["kdist"]["roc_auc"] == 1.0 and s["scores"]["kdist"]["precision"] == 1.0
    assert s["roc_auc"] == 1.0 and s["kdist_cut"] == 5.0 and 0.0 <= s["scores"]["similarity"]["roc_auc"] <= 1.0
    with pytest.raises(ConfigError, match="threshold"):
        scan_table({"kdist": kd}, owner, texts, threshold=0.5)
