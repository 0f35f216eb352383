"""SafeCLIP's safe/risky split: a 2-component GMM on image–caption cosine similarities and the growing safe set.

Official code (``SafeCLIP/src/train.py``, ``shared/reference/algorithms.md`` §3.3, Phase C):

1. fit ``GaussianMixture(n_components=2, random_state=0)`` to the 1-D similarities; ``p_clean`` = posterior of the
   component with the larger mean;
2. first filtering epoch: ``safe = {i : p_clean(i) >= 0.9}``, ``ratio = |safe| / N``;
3. later epochs: ``safe`` = the top ``floor(ratio * N)`` pairs by ``p_clean`` (ties: higher similarity first);
4. after each split, ``ratio <- min(ratio + 0.01, 0.85)``.

So the k-th filtering epoch (k = 0, 1, ...) uses ``ratio_k = min(ratio_0 + 0.01·k, 0.85)`` for k >= 1 (note the
cap also applies when the threshold split of the first epoch was larger than 0.85, as in the official code).

Option (not in the official code; ``cap_from_gmm``): the cap also follows the data — ``ratio_k`` is at most the
**weight of the clean (higher-mean) GMM component** of the latest fit, the GMM's own estimate of the share of aligned
pairs. A fixed cap is a guess of the share of pairs that can be trusted: 0.85 on CC3M, while 0.7 was what the bundled
generated captions (a fifth of them name no class) needed; the fitted weight measures it on the data at hand. Every
fit's statistics (means, standard deviations, weights, separation ``|μ1−μ0| / sqrt((σ0²+σ1²)/2)``) are recorded.

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
    >>> round(gmm_fit(sims)[1]["clean_weight"], 2), FilterSchedule(0.5, 0.05, 0.85, data_cap=0.6).ratio(4)
    (0.9, 0.6)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np


def gmm_fit(similarities, seed: int = 0) -> tuple[np.ndarray, dict]:
    """A 2-component GMM on the similarities (N,): the posterior of the higher-mean ("clean") component, and the
    fit's statistics (``clean_weight`` = that component's mixing weight; ``separation`` in pooled std units)."""
    from sklearn.mixture import GaussianMixture

    x = np.asarray(similarities, dtype=np.float64).reshape(-1, 1)
    if len(x) < 2 or float(x.std()) < 1e-12:
        return np.ones(len(x)), {"clean_weight": 1.0, "separation": 0.0}
    gmm = GaussianMixture(n_components=2, random_state=seed, max_iter=100, tol=1e-3, reg_covar=1e-6).fit(x)
    means, sds = gmm.means_.ravel(), np.sqrt(gmm.covariances_.ravel())
    clean = int(np.argmax(means))
    stats = {"clean_weight": float(gmm.weights_[clean]), "clean_mean": float(means[clean]),
             "risky_mean": float(means[1 - clean]), "clean_std": float(sds[clean]), "risky_std": float(sds[1 - clean]),
             "separation": float(abs(means[clean] - means[1 - clean]) / max(np.sqrt((sds ** 2).mean()), 1e-12))}
    return gmm.predict_proba(x)[:, clean], stats


def gmm_clean_posterior(similarities, seed: int = 0) -> np.ndarray:
    """Posterior of the higher-mean component of a 2-component GMM fitted to the similarities (N,)."""
    return gmm_fit(similarities, seed)[0]


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
    data_cap: Optional[float] = None  # cap_from_gmm: the clean component's weight of the latest fit

    def ratio(self, k: int) -> float:
        if k <= 0:
            return self.first_ratio
        cap = self.cap if self.data_cap is None else min(self.cap, self.data_cap)
        return round(min(self.first_ratio + self.step * k, cap), 10)


@dataclass
class Split:
    safe: np.ndarray
    risky: np.ndarray
    ratio: float  # |safe| / N
    p_clean: np.ndarray
    similarities: np.ndarray
    rule: str  # "threshold" | "ratio"
    gmm: Optional[dict] = None  # the fit's statistics (gmm_fit)


def group_cut(p_clean: np.ndarray, similarities: np.ndarray, groups: Optional[np.ndarray] = None,
              group_rule: str = "min", *, threshold: Optional[float] = None,
              ratio: Optional[float] = None) -> tuple[np.ndarray, np.ndarray]:
    """(safe, risky): the pairs with posterior ``>= threshold``, or the top ``ratio`` of them (ties: higher similarity
    first). With ``groups`` (a label per pair, ``group_duplicates``): ``min`` ranks each pair at its group's lowest
    posterior and similarity; ``veto`` ranks it on its own and keeps it safe only when its whole group is in the cut;
    ``veto_refill`` then, for a ``ratio`` cut, fills the safe set back to the ratio with ungrouped pairs in their own
    order (:mod:`~clpoison.defenses.safeclip.safeclip_groups`)."""
    p, s = p_clean, similarities
    if groups is not None and group_rule == "min":
        from .safeclip_groups import group_min

        p, s = group_min(p_clean, groups), group_min(similarities, groups)
    safe, risky = split_by_threshold(p, threshold) if ratio is None else split_by_ratio(p, ratio, s)
    if groups is None or group_rule == "min":
        return safe, risky
    from .safeclip_groups import refill, veto

    cut = len(safe)
    safe, risky = veto(safe, len(p), groups)
    if group_rule == "veto_refill" and ratio is not None:
        safe, risky = refill(safe, len(p), groups, rank_by_clean(p, s), cut)
    return safe, risky


def safeclip_split(similarities, k: int, schedule: Optional[FilterSchedule], threshold: float = 0.9,
                   step: float = 0.01, cap: float = 0.85, seed: int = 0,
                   cap_from_gmm: bool = False, groups: Optional[np.ndarray] = None,
                   group_rule: str = "min") -> tuple[Split, FilterSchedule]:
    """The split of the k-th filtering epoch. ``k == 0`` (or no schedule yet) uses the posterior threshold and
    returns the schedule it starts; later epochs take the schedule's top fraction (capped by the clean component's
    weight of this fit too, with ``cap_from_gmm``). With ``groups`` the GMM is still fitted to the pairs' own
    similarities (``Split.p_clean`` is each pair's own posterior) and the cut follows ``group_rule`` (:func:`group_cut`)."""
    sims = np.asarray(similarities, dtype=np.float64)
    p, stats = gmm_fit(sims, seed)
    if k == 0 or schedule is None:
        safe, risky = group_cut(p, sims, groups, group_rule, threshold=threshold)
        vetoing = groups is not None and group_rule != "min"  # the schedule grows from the cut before the veto
        first = len(split_by_threshold(p, threshold)[0]) if vetoing else len(safe)
        schedule = FilterSchedule(first / max(len(sims), 1), step, cap, stats["clean_weight"] if cap_from_gmm else None)
        return Split(safe, risky, len(safe) / max(len(sims), 1), p, sims, "threshold", stats), schedule
    if cap_from_gmm:
        schedule.data_cap = stats["clean_weight"]
    safe, risky = group_cut(p, sims, groups, group_rule, ratio=schedule.ratio(k))
    return Split(safe, risky, len(safe) / max(len(sims), 1), p, sims, "ratio", stats), schedule


def cap_excess(split: Split, margin: float = 0.05) -> Optional[str]:
    """One warning line when the safe set is larger than the GMM's clean component by more than ``margin`` — the
    defender-visible sign (no poison labels needed) that pairs the fit itself calls risky are trained with the CLIP
    loss, which is how targeted poisons entered the safe set on descriptive captions (docs/webcaps.md); else None."""
    weight = (split.gmm or {}).get("clean_weight")
    if weight is None or split.ratio <= weight + margin:
        return None
    return (f"safeclip: the safe set ({split.ratio:.0%} of the pairs) exceeds the GMM's clean component "
            f"({weight:.0%}): pairs the fit calls risky get the CLIP loss; on captions other than the bundled ones "
            f"lower defense.params.cap_filter_ratio or set defense.params.cap_from_gmm=true")


def poison_precision_recall(risky: np.ndarray, poisons: np.ndarray) -> dict[str, float]:
    """Precision and recall of the known poisons in the risky set."""
    risky_set, pois = set(np.asarray(risky).tolist()), set(np.asarray(poisons).tolist())
    hit = len(risky_set & pois)
    return {"poison_precision_risky": hit / len(risky_set) if risky_set else 0.0,
            "poison_recall_risky": hit / len(pois) if pois else float("nan"), "poisons_in_risky": hit}
