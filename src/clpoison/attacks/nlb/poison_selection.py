"""Choosing which unlabeled images to poison from an SSL encoder's features — No-Label Backdoors (Wang, Ma,
Jegelka, Wang, "How to Craft Backdoors with Unlabeled Data Alone?", ICLR 2024 DPFM workshop, arXiv 2404.06694;
official ``main_poison.py``; ``algorithms.md`` §5.3–5.4).

Features are L2-normalised (cosine similarity ``S = F Fᵀ``); ``M`` is the number of poisons.

* ``kmeans`` — ``MiniBatchKMeans(n_clusters, n_init="auto")``; the *smallest* cluster with at least ``M``
  members; its first ``M`` members in dataset order (not the ones nearest the centroid);
* ``con`` — for every candidate anchor ``i``, the top-2M similarities of row ``i`` in descending order (``s₁ = 1``
  is ``i`` itself); ``score(i) = Σ_{k≤M} s_k − Σ_{M<k≤2M} s_k``; the anchor is ``argmax score``; the poisons are its
  ``M`` nearest neighbours (itself included). Ablations: ``conp`` (alignment only: the mean of the top-M) and
  ``conn`` (separation only: ``−Σ_{M<k≤2M} s_k``);
* baselines ``random`` (``M`` uniform indices) and ``target`` (``M`` random images of one true class — it needs
  labels; the upper reference).

**Scale.** The official code builds the N × N matrix densely (8.1 GB in fp32 at N = 45k). Here the top-2M per row is
computed chunk by chunk on the device, so the peak memory is O(chunk · N) (:func:`contrastive_scores`); it gives
the dense selection (tested against a dense reference).

Budget (official): ``M = int(rate · N / n_clusters)`` (:func:`nlb_budget`; scripts use rate 0.6).

Example::

    >>> import torch
    >>> f = torch.nn.functional.normalize(torch.randn(200, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    >>> sel = select("con", f, 10)
    >>> len(sel.indices), int(sel.anchor) in sel.indices.tolist()
    (10, True)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import ConfigError

RULES = ("random", "kmeans", "con", "conp", "conn", "target")


@dataclass
class Selection:
    """The chosen rows (sorted), the rule, and what it scored: ``anchor`` and per-row ``scores`` for the
    contrastive rules, the cluster for ``kmeans``."""

    indices: torch.Tensor
    rule: str
    anchor: Optional[int] = None
    scores: Optional[torch.Tensor] = None
    info: dict[str, Any] = field(default_factory=dict)


def nlb_budget(rate: Optional[float], count: Optional[int], n: int, n_clusters: int) -> int:
    """``count`` if given, else the paper's ``int(rate · N / n_clusters)``; must be in [1, N]."""
    m = int(count) if count is not None else int((0.6 if rate is None else rate) * n / n_clusters)
    if not 1 <= m <= n:
        raise ConfigError(f"the poison budget M={m} must be between 1 and the {n} training images; "
                          "change attack.params.poison_rate / poison_count")
    return m


def default_chunk(n: int, budget_bytes: int = 256 * 2**20) -> int:
    """Rows per chunk so that one chunk of similarities (chunk × N fp32) stays within ``budget_bytes``."""
    return max(1, budget_bytes // (4 * max(1, n)))


def contrastive_scores(features: torch.Tensor, m: int, kind: str = "con", chunk: Optional[int] = None) -> torch.Tensor:
    """``score(i)`` of every row from its top-2M cosine similarities, computed ``chunk`` rows at a time (default:
    :func:`default_chunk`, 256 MB of similarities; the N × N matrix is never held: peak memory O(chunk · N))."""
    n = len(features)
    chunk = chunk or default_chunk(n)
    if m < 1 or 2 * m > n:
        raise ConfigError(f"the contrastive rules need 2M <= N (M={m}, N={n}); lower the budget")
    out = torch.empty(n, dtype=torch.float32, device=features.device)
    for s in range(0, n, chunk):
        top = (features[s:s + chunk] @ features.t()).topk(2 * m, dim=1).values.float()
        pos, neg = top[:, :m].sum(1), top[:, m:].sum(1)
        out[s:s + chunk] = {"con": pos - neg, "conp": pos / m, "conn": -neg}[kind]
    return out


def nearest(features: torch.Tensor, anchor: int, m: int) -> torch.Tensor:
    """The ``m`` rows most similar to ``anchor`` (cosine; the anchor itself first)."""
    return (features @ features[anchor]).topk(m).indices


def select(rule: str, features: Optional[torch.Tensor], m: int, n: Optional[int] = None, seed: int = 0,
           n_clusters: int = 10, labels: Optional[torch.Tensor] = None, target: Optional[int] = None,
           chunk: Optional[int] = None) -> Selection:
    """The poison set of ``rule`` (one of :data:`RULES`) of size ``m``. ``features`` (N, D) L2-normalised (not
    needed for ``random`` / ``target``); ``labels`` and ``target`` for ``target``."""
    if rule not in RULES:
        raise ConfigError(f"attack.params.selection='{rule}' is unknown; choose one of: {', '.join(RULES)}")
    n = len(features) if features is not None else int(n if n is not None else len(labels))
    if not 1 <= m <= n:
        raise ConfigError(f"the poison budget M={m} must be between 1 and the {n} training images")
    g = torch.Generator().manual_seed(int(seed))
    if rule == "random":
        return Selection(torch.randperm(n, generator=g)[:m].sort().values, rule)
    if rule == "target":
        if labels is None or target is None or bool((labels < 0).any()):
            raise ConfigError("selection 'target' needs the true labels and attack.params.target (a class)")
        pool = (labels == target).nonzero().flatten()
        if len(pool) < m:
            raise ConfigError(f"selection 'target': class {target} has {len(pool)} images, fewer than M={m}")
        return Selection(pool[torch.randperm(len(pool), generator=g)[:m]].sort().values, rule)
    if features is None:
        raise ConfigError(f"selection '{rule}' needs the attacker's encoder features")
    features = F.normalize(features.float(), dim=1)
    if rule == "kmeans":
        return select_kmeans(features, m, n_clusters, seed)
    scores = contrastive_scores(features, m, rule, chunk)
    anchor = int(scores.argmax())
    return Selection(nearest(features, anchor, m).sort().values.cpu(), rule, anchor, scores.cpu())


def select_kmeans(features: torch.Tensor, m: int, n_clusters: int, seed: int) -> Selection:
    """The first ``m`` members (dataset order) of the smallest MiniBatchKMeans cluster with at least ``m``."""
    from sklearn.cluster import MiniBatchKMeans

    if n_clusters < 1:
        raise ConfigError(f"attack.params.clusters={n_clusters} must be >= 1")
    x = features.cpu().numpy().astype(np.float32)
    assign = MiniBatchKMeans(n_clusters=n_clusters, n_init="auto", random_state=int(seed)).fit_predict(x)
    sizes = np.bincount(assign, minlength=n_clusters)
    ok = [c for c in np.argsort(sizes, kind="stable") if sizes[c] >= m]
    if not ok:
        raise ConfigError(f"no k-means cluster has M={m} members (largest: {int(sizes.max())}); lower the budget "
                          "or attack.params.clusters")
    c = int(ok[0])
    members = np.flatnonzero(assign == c)[:m]
    return Selection(torch.from_numpy(members.astype(np.int64)), "kmeans",
                     info={"cluster": c, "cluster_size": int(sizes[c]), "cluster_sizes": sizes.tolist()})


def purity(indices: torch.Tensor, labels: torch.Tensor) -> tuple[int, float]:
    """``(anchor label, TPR)``: the majority true label of the poison set and the share of it with that label
    (computed for evaluation only; the attacker never sees labels)."""
    lab = labels[indices]
    counts = torch.bincount(lab[lab >= 0], minlength=int(labels.max()) + 1)
    anchor = int(counts.argmax())
    return anchor, float(counts[anchor]) / max(1, len(indices))
