"""Local-density scores of embeddings: k-distance, SLOF, DAO and LID (Detect-CLIP-Backdoor-Samples, Huang et al.,
ICLR 2025; official code ``HanxunH/Detect-CLIP-Backdoor-Samples``, ``backdoor_sample_detector/``).

For each point x, let ``a_0 <= ... <= a_k`` be the Euclidean distances to its ``k + 1`` nearest *other* points of
the neighbour pool (the point itself is excluded by index, as the official ``get_pair_wise_distance``; a duplicate
image is a neighbour at distance 0) and ``kd(x) = a_k`` (the official ``a[:, k]``). With ``N_k(x)`` the first k
neighbours:

* ``kdist(x) = kd(x)``;
* ``lid(x) = -k / Σ_{i<k} log(a_i / a_k + 1e-4)`` (maximum-likelihood LID, ``est_type='mle'``);
* ``slof(x) = mean_{j∈N_k(x)} kd(x) / kd(j)``;
* ``dao(x) = mean_{j∈N_k(x)} lid(j) · log(kd(x) / kd(j))``.

Higher = more anomalous for all four, as the official code (its README: "a higher score indicates more likely to be
backdoor samples"); NaN/inf are mapped as the official ``nan_to_num(nan=1000, posinf=1000, neginf=0)``.

**Direction** (``direction``). ``"high"`` (the default, the official detector): the score as above, higher = riskier.
``"two-sided"`` (a stated deviation, opt-in): how far the score lies from the bulk of its distribution *in either
direction*, so that a tight dense cluster (k-distance far below the rest: more than k poisons that collapsed to one
point) and sparse outliers (far above) both rank first. It is the robust z-score of the score's magnitude,

``two_sided(x) = |v(x) - median(v)| / (1.4826 · MAD(v))``, ``MAD(v) = median |v - median(v)|``,

with ``v = log s`` for the positive scores ``kdist``, ``slof`` and ``lid`` (their deviations are ratios: half and
twice the typical k-distance are equally far) and ``v = s`` for ``dao``, which is already a signed log-ratio (SLOF's
log weighted by LID; it can be negative, so it has no log). The median is the mean of the two middle values for an
even count; 1.4826 makes the MAD the standard deviation of a normal bulk (the ranking does not depend on it). A
score <= 0 (a k-distance of 0: more than k duplicates of an image; a degenerate LID) is floored at the smallest
positive float64 before the log, so it ranks as the most extreme dense point. When more than half the values are
equal (MAD 0) the mean absolute deviation scales instead, and 1 when that is 0 too. Median and MAD are taken over
the whole set, also with batch neighbours (the scores of all batches are one distribution).

**Neighbour pool.** ``batch=None``: the whole set (deterministic, order-free). ``batch=B``: the official setting,
where neighbours come from the evaluation batch only — a seeded permutation cut into ``ceil(N / B)`` nearly equal
batches, each scored on its own (neighbours, their ``kd`` and ``lid`` all within the batch).

**Two deliberate deviations from the official code** (both are index slips there): (1) SLOF/DAO read the neighbours'
distances from the full distance matrix including the zero self-distance, so a neighbour's ``kd`` is its k-th and
not its (k+1)-th neighbour distance — here ``kd`` is the same quantity for x and its neighbours; (2) the neighbour
indices are taken after the self column was removed, which shifts every index past the diagonal by one — here they
are the true neighbours.

**Memory.** Neighbours are found chunk by chunk (``chunk`` rows against the whole pool: O(chunk · N) floats; the
default chunk keeps that near ``2**27`` floats, 512 MiB in float32), by one matrix product per chunk; the selected
``k + 1`` distances are then recomputed exactly as ``||x - y||`` (the product form loses precision that LID's
ratios near 1 would feel — the official code uses ``donot_use_mm_for_euclid_dist`` for the same reason).
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from ..errors import ConfigError

DENSITY_SCORES: tuple[str, ...] = ("kdist", "dao", "slof", "lid")
DIRECTIONS: tuple[str, ...] = ("high", "two-sided")
LOG_SCORES: tuple[str, ...] = ("kdist", "slof", "lid")  # positive: two-sided deviations are taken in log space
DEFAULT_K = 32
_BUDGET = 2**27  # floats of one chunk's distance block


def _chunk_rows(n: int, chunk: Optional[int]) -> int:
    return max(1, int(chunk) if chunk else min(4096, _BUDGET // max(n, 1)))


@torch.no_grad()
def knn(x: torch.Tensor, k: int, chunk: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dist, idx)`` of the ``k + 1`` nearest other rows of ``x`` (N, D), ascending, each (N, k + 1)."""
    n = len(x)
    if n < k + 2:
        raise ConfigError(f"a neighbour pool of {n} points is too small for k={k}; use a smaller --k or larger "
                          "--neighbour-batch")
    xf = x.float()
    sq = (xf * xf).sum(1)
    step = _chunk_rows(n, chunk)
    dist, idx = [], []
    for s in range(0, n, step):
        q = xf[s : s + step]
        d2 = sq[s : s + step, None] + sq[None, :] - 2.0 * (q @ xf.T)
        rows = torch.arange(len(q), device=x.device)
        d2[rows, rows + s] = float("inf")  # the point itself, by index
        i = d2.topk(k + 1, dim=1, largest=False).indices
        exact = (q[:, None, :].double() - xf[i].double()).norm(dim=2)  # exact distances of the chosen ones
        exact, order = exact.sort(dim=1, stable=True)
        dist.append(exact)
        idx.append(i.gather(1, order))
    return torch.cat(dist), torch.cat(idx)


def _finite(s: torch.Tensor) -> torch.Tensor:
    return torch.nan_to_num(s, nan=1000.0, posinf=1000.0, neginf=0.0)


def scores_from_knn(dist: torch.Tensor, idx: torch.Tensor, k: int, names=DENSITY_SCORES) -> dict[str, torch.Tensor]:
    """The named scores from :func:`knn`'s output (neighbours and their k-distances within the same pool)."""
    kd = dist[:, k]
    out: dict[str, torch.Tensor] = {}
    lid = -k / torch.log(dist[:, :k] / kd[:, None] + 1e-4).sum(1)
    nb = idx[:, :k]
    for name in names:
        if name == "kdist":
            out[name] = kd
        elif name == "lid":
            out[name] = _finite(lid)
        elif name == "slof":
            out[name] = _finite((kd[:, None] / kd[nb]).mean(1))
        elif name == "dao":
            out[name] = _finite((lid[nb] * torch.log(kd[:, None] / kd[nb])).mean(1))
        else:
            raise ConfigError(f"unknown density score '{name}'; choose from {', '.join(DENSITY_SCORES)}")
    return out


def _median(v: torch.Tensor) -> torch.Tensor:
    s = v.sort().values
    return (s[(len(s) - 1) // 2] + s[len(s) // 2]) / 2


def two_sided(name: str, s: torch.Tensor) -> torch.Tensor:
    """The two-sided version of the density score ``name`` with values ``s`` (module doc: robust z-score of
    ``|log s - median(log s)|``, of ``|s - median(s)|`` for ``dao``); higher = farther from the bulk."""
    s = s.double()
    v = torch.log(s.clamp(min=torch.finfo(torch.float64).tiny)) if name in LOG_SCORES else s
    if not len(v):
        return v
    dev = (v - _median(v)).abs()
    scale = 1.4826 * _median(dev)
    if not scale > 0:
        scale = dev.mean()
    return dev / scale if scale > 0 else dev


def check_direction(direction: str) -> None:
    if direction not in DIRECTIONS:
        raise ConfigError(f"--direction '{direction}' is unknown; choose from {', '.join(DIRECTIONS)}")


def density_scores(x: torch.Tensor, names=DENSITY_SCORES, k: int = DEFAULT_K, batch: Optional[int] = None,
                   seed: int = 0, chunk: Optional[int] = None, direction: str = "high") -> dict[str, torch.Tensor]:
    """Each named score (float64, on ``x``'s device) of every row of ``x``; see the module doc for ``batch`` and
    ``direction`` (``"high"``: the official scores; ``"two-sided"``: :func:`two_sided` of each, over the whole set)."""
    check_direction(direction)
    out = _density_scores(x, names, k, batch, seed, chunk)
    return out if direction == "high" else {n: two_sided(n, v) for n, v in out.items()}


def _density_scores(x: torch.Tensor, names, k: int, batch: Optional[int], seed: int, chunk: Optional[int]
                    ) -> dict[str, torch.Tensor]:
    if k < 1:
        raise ConfigError(f"--k {k} must be >= 1")
    if batch is None or batch >= len(x):
        return scores_from_knn(*knn(x, k, chunk), k, names)
    if batch < k + 2:
        raise ConfigError(f"--neighbour-batch {batch} must exceed k + 1 = {k + 1}")
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed)).to(x.device)
    out = {n: torch.empty(len(x), dtype=torch.float64, device=x.device) for n in names}
    for part in torch.tensor_split(perm, math.ceil(len(x) / batch)):
        for n, v in scores_from_knn(*knn(x[part], k, chunk), k, names).items():
            out[n][part] = v
    return out
