"""SafeCLIP's safe/risky split: a 2-component GMM on image–caption cosine similarities and the growing safe set.

Official code (``SafeCLIP/src/train.py``, ``shared/reference/algorithms.md`` §3.3, Phase C):

1. fit ``GaussianMixture(n_components=2, random_state=0)`` to the 1-D similarities; ``p_clean`` = posterior of the
   component with the larger mean;
2. first filtering epoch: ``safe = {i : p_clean(i) >= 0.9}``, ``ratio = |safe| / N``;
3. later epochs: ``safe`` = the top ``floor(ratio * N)`` pairs by ``p_clean`` (ties: higher similarity first);
4. after each split, ``ratio <- min(ratio + 0.01, 0.85)``.

So the k-th filtering epoch (k = 0, 1, ...) uses ``ratio_k = min(ratio_0 + 0.01·k, 0.85)`` for k >= 1 (note the
cap also applies when the threshold split of the first epoch was larger than 0.85, as in the official code).

Example::

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> sims = np.concatenate([rng.normal(0.6, 0.05, 900), rng.normal(0.1, 0.05, 100)])
    >>> p = gmm_clean_posterior(sims)
    >>> safe, risky = split_by_threshold(p, 0.9)
    >>> bool(np.isin(np.arange(900, 1000), risky).mean() > 0.95)
    True
    >>> FilterSchedule(0.5).ratio(3), FilterSchedule(0.84).ratio(5)
    (0.53, 0.85)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np


def gmm_clean_posterior(similarities, seed: int = 0) -> np.ndarray:
    """Posterior of the higher-mean component of a 2-component GMM fitted to the similarities (N,)."""
    from sklearn.mixture import GaussianMixture

    x = np.asarray(similarities, dtype=np.float64).reshape(-1, 1)
    if len(x) < 2 or float(x.std()) < 1e-12:
        return np.ones(len(x))
    gmm = GaussianMixture(n_components=2, random_state=seed, max_iter=100, tol=1e-3, reg_covar=1e-6).fit(x)
    clean = int(np.argmax(gmm.means_.ravel()))
    return gmm.predict_proba(x)[:, clean]


def rank_by_clean(p_clean: np.ndarray, similarities: Optional[np.ndarray] = None) -> np.ndarray:
    """Indices sorted from most to least likely clean (p_clean descending, then similarity descending)."""
    p = np.asarray(p_clean, dtype=np.float64)
    s = np.zeros_like(p) if similarities is None else np.asarray(similarities, dtype=np.float64)
    return np.lexsort((-s, -p))


def split_by_threshold(p_clean: np.ndarray, threshold: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(p_clean)
    return np.flatnonzero(p >= threshold), np.flatnonzero(p < threshold)


def split_by_ratio(p_clean: np.ndarray, ratio: float, similarities: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    order = rank_by_clean(p_clean, similarities)
    k = int(math.floor(ratio * len(order) + 1e-9))
    return np.sort(order[:k]), np.sort(order[k:])


@dataclass
class FilterSchedule:
    """``ratio(k)`` of the k-th filtering epoch, given the first epoch's threshold split ``first_ratio``."""

    first_ratio: float
    step: float = 0.01
    cap: float = 0.85

    def ratio(self, k: int) -> float:
        if k <= 0:
            return self.first_ratio
        return round(min(self.first_ratio + self.step * k, self.cap), 10)


@dataclass
class Split:
    safe: np.ndarray
    risky: np.ndarray
    ratio: float  # |safe| / N
    p_clean: np.ndarray
    similarities: np.ndarray
    rule: str  # "threshold" | "ratio"


def safeclip_split(similarities, k: int, schedule: Optional[FilterSchedule], threshold: float = 0.9,
                   step: float = 0.01, cap: float = 0.85, seed: int = 0) -> tuple[Split, FilterSchedule]:
    """The split of the k-th filtering epoch. ``k == 0`` (or no schedule yet) uses the posterior threshold and
    returns the schedule it starts; later epochs take the schedule's top fraction."""
    sims = np.asarray(similarities, dtype=np.float64)
    p = gmm_clean_posterior(sims, seed)
    if k == 0 or schedule is None:
        safe, risky = split_by_threshold(p, threshold)
        schedule = FilterSchedule(len(safe) / max(len(sims), 1), step, cap)
        return Split(safe, risky, schedule.first_ratio, p, sims, "threshold"), schedule
    ratio = schedule.ratio(k)
    safe, risky = split_by_ratio(p, ratio, sims)
    return Split(safe, risky, len(safe) / max(len(sims), 1), p, sims, "ratio"), schedule


def poison_precision_recall(risky: np.ndarray, poisons: np.ndarray) -> dict[str, float]:
    """Precision and recall of the known poisons in the risky set."""
    risky_set, pois = set(np.asarray(risky).tolist()), set(np.asarray(poisons).tolist())
    hit = len(risky_set & pois)
    return {"poison_precision_risky": hit / len(risky_set) if risky_set else 0.0,
            "poison_recall_risky": hit / len(pois) if pois else float("nan"), "poisons_in_risky": hit}
