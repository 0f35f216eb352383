"""Local-density scores (clpoison.eval.density): equal to a naive reference, chunked == dense, batch neighbours, a
planted tight cluster ranks first; the two-sided direction equals its naive reference, ranks a planted dense cluster
and planted sparse outliers first, and the default direction is unchanged."""

from __future__ import annotations

import math

import pytest
import torch

from clpoison.errors import ConfigError
from clpoison.eval.density import DENSITY_SCORES, density_scores, knn, scores_from_knn


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


def naive_two_sided(name: str, values: list[float]) -> list[float]:
    """|v - median v| / (1.4826 MAD), v = log s for kdist / slof / lid, s for dao (statistics.median, floats)."""
    import statistics

    v = [math.log(s) for s in values] if name != "dao" else list(values)
    med = statistics.median(v)
    dev = [abs(a - med) for a in v]
    mad = 1.4826 * statistics.median(dev)
    return [d / mad for d in dev]


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

    from clpoison.audit.data_scan import scan_table

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


def test_two_sided_equals_naive_reference():
    x = torch.randn(61, 5, generator=torch.Generator().manual_seed(6))  # odd and even counts: both medians
    for n in (61, 60):
        ref = naive(x[:n], 7)
        got = density_scores(x[:n], k=7, direction="two-sided")
        for name in DENSITY_SCORES:
            want = torch.tensor(naive_two_sided(name, ref[name].tolist()), dtype=torch.float64)
            torch.testing.assert_close(got[name], want, rtol=1e-6, atol=1e-9)


def test_default_direction_is_unchanged():
    """The default is the official score, bit for bit: the same tensors as the primitives (and as direction="high"),
    whole set and batches."""
    x = torch.randn(120, 6, generator=torch.Generator().manual_seed(7))
    before = scores_from_knn(*knn(x, 9), 9, DENSITY_SCORES)
    for got in (density_scores(x, k=9), density_scores(x, k=9, direction="high")):
        assert set(got) == set(before) and all(torch.equal(got[n], before[n]) for n in before)
    assert all(torch.equal(a, b) for a, b in zip(density_scores(x, k=9, batch=50, seed=1).values(),
                                                  density_scores(x, k=9, batch=50, seed=1, direction="high").values()))
    with pytest.raises(ConfigError, match="direction"):
        density_scores(x, k=9, direction="low")


def planted(g: torch.Generator, cluster: int, outliers: int) -> torch.Tensor:
    """A spread-out bulk of 300 points in 8-D, then ``cluster`` near-identical points inside it (more than k: each
    one's neighbours are the others, k-distance far BELOW the bulk's), then ``outliers`` isolated points far from the
    bulk and from each other (k-distance far ABOVE)."""
    bulk = torch.randn(300, 8, generator=g)
    tight = 0.3 + 1e-3 * torch.randn(cluster, 8, generator=g)
    far = 12.0 * torch.nn.functional.normalize(torch.randn(outliers, 8, generator=g), dim=1)
    return torch.cat([bulk, tight, far])


def top(v: torch.Tensor, n: int) -> set[int]:
    return set(v.argsort(descending=True, stable=True)[:n].tolist())


def test_two_sided_ranks_a_tight_cluster_and_sparse_outliers_first():
    g = torch.Generator().manual_seed(8)
    k = 16
    x = planted(g, 40, 0)  # the 5 % case: a collapsed group larger than k
    cluster = set(range(300, 340))
    high = density_scores(x, ("kdist",), k)["kdist"]
    assert top(-high, 40) == cluster  # the official direction ranks the cluster LAST
    # k-distance sees the collapse; SLOF / DAO / LID compare a point with its neighbours, which are the cluster itself
    assert top(density_scores(x, ("kdist",), k, direction="two-sided")["kdist"], 40) == cluster
    x = planted(g, 0, 10)  # the low-rate case: sparse local outliers
    for name, v in density_scores(x, ("kdist", "slof", "dao"), k, direction="two-sided").items():
        assert top(v, 10) == set(range(300, 310)), name
    x = planted(g, 40, 10)  # both at once
    assert top(density_scores(x, ("kdist",), k, direction="two-sided")["kdist"], 50) == set(range(300, 350))


def test_two_sided_of_degenerate_scores_is_finite():
    """k-distance 0 (more than k duplicates) and a MAD of 0 still give finite values, the duplicates ranked first."""
    from clpoison.eval.density import two_sided

    s = torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 2.0])
    v = two_sided("kdist", s)
    assert torch.isfinite(v).all() and top(v, 2) == {0, 1}
    assert torch.equal(two_sided("dao", torch.zeros(4)), torch.zeros(4, dtype=torch.float64))
