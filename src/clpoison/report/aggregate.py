"""Runs grouped into settings (same config up to the seed) with mean ± std over seeds and 95 % intervals.

* **Clean accuracy (CA)** is the task's downstream accuracy: zero-shot top-1 for CLIP, linear-probe top-1 for image
  SSL (kNN top-1 when no probe was trained). Its 95 % interval is Student's t over the seeds' values
  (``mean ± t(0.975, n−1)·sd/√n``; none for a single seed).
* **Attack success rate (ASR)** and **targeted success** are rates over test images / victims. Their 95 % interval
  is the Wilson score interval of the hits pooled over seeds (``Σ hits / Σ n``): it states the sampling error of
  the images, not the spread between seeds (that is the ± std beside it).

Example::

    >>> lo, hi = t_interval([0.5, 0.6, 0.7]); round(lo, 3), round(hi, 3)
    (0.352, 0.848)
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from ..eval.attack_metrics import wilson_interval
from .collect import Run, flat

__all__ = ["Setting", "settings", "t_interval", "wilson_interval", "ca_of", "INTERVALS_NOTE"]

CA_KEYS = ("zeroshot_top1", "linear_top1", "ca", "knn_top1")
IGNORED = ("name", "seed", "train.progress")  # keys that do not make a different setting
INTERVALS_NOTE = ("Mean ± standard deviation over seeds. 95 % intervals: clean accuracy — Student's t over the seeds; "
                  "attack success rate and targeted success — Wilson score interval of the hits pooled over seeds "
                  "(test images, victims), i.e. the sampling error of the images, not the spread between seeds.")


def t_interval(xs: Sequence[float], level: float = 0.95) -> Optional[tuple[float, float]]:
    """Student's t interval of the mean of ``xs`` (None for fewer than two values)."""
    xs = [float(x) for x in xs]
    if len(xs) < 2:
        return None
    from scipy import stats

    m, sd = statistics.fmean(xs), statistics.stdev(xs)
    h = float(stats.t.ppf(0.5 + level / 2, len(xs) - 1)) * sd / math.sqrt(len(xs))
    return (m - h, m + h)


def ca_of(metrics: dict) -> tuple[Optional[str], Optional[float]]:
    """``(metric name, value)`` of a run's clean accuracy (the first of :data:`CA_KEYS` present)."""
    for k in CA_KEYS:
        v = metrics.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            return k, float(v)
    return None, None


@dataclass
class Setting:
    """Runs of one config up to the seed, and their statistics."""

    key: tuple
    label: dict[str, Any]  # column -> value (method, attack, defense, poison rate, other varied keys)
    runs: list[Run] = field(default_factory=list)
    ca_key: Optional[str] = None  # the clean-accuracy metric of the whole report (one for every row)

    @property
    def seeds(self) -> list:
        return [r.results["config"].get("seed") for r in self.runs]

    def values(self, metric: str) -> list[float]:
        out = []
        for r in self.runs:
            v = r.results["metrics"].get(self.ca_key or "") if metric == "ca" else r.results["metrics"].get(metric)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                out.append(float(v))
        return out

    def summary(self, metric: str) -> Optional[dict[str, Any]]:
        """``{"mean", "std", "n", "values", "ci"}`` over seeds (None when no run has it); ``ci`` as described in
        the module docstring."""
        xs = self.values(metric)
        if not xs:
            return None
        out: dict[str, Any] = {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0,
                               "n": len(xs), "values": xs, "ci": None, "ci_kind": None}
        counts = {"asr": ("asr_hits", "asr_n"), "targeted_success_rate": ("targeted_successes", "targeted_n")}
        if metric in counts:
            hk, nk = counts[metric]
            pairs = [(r.results["metrics"].get(hk), r.results["metrics"].get(nk)) for r in self.runs]
            if pairs and all(isinstance(k, int) and isinstance(n, int) for k, n in pairs):
                k, n = sum(p[0] for p in pairs), sum(p[1] for p in pairs)
                out.update(ci=wilson_interval(k, n), ci_kind="wilson", hits=k, trials=n)
        else:
            ci = t_interval(xs)
            if ci and metric == "ca":  # an accuracy lies in [0, 1]
                ci = (max(0.0, ci[0]), min(1.0, ci[1]))
            out.update(ci=ci, ci_kind="t" if ci else None)
        return out


def _varying(runs: Sequence[Run]) -> list[str]:
    flats = [flat(r.results.get("config") or {}) for r in runs]
    keys: list[str] = []
    for f in flats:
        keys += [k for k in f if k not in keys]
    return [k for k in keys if k not in IGNORED and len({repr(f.get(k)) for f in flats}) > 1]


def _rate(cfg: dict) -> Optional[float]:
    a = (cfg.get("attack") or {}).get("params") or {}
    r = a.get("poison_rate")
    return float(r) if isinstance(r, (int, float)) and not isinstance(r, bool) else None


def _poisons(run: Run) -> str:
    """The poison budget as a person reads it: ``0`` (clean), ``1 %`` (a rate), ``8 samples`` (a count),
    ``16 victims × 5`` (targeted poisoning: pairs per victim) or ``—``."""
    if is_clean(run):
        return "0"
    cfg = run.results.get("config") or {}
    params = (cfg.get("attack") or {}).get("params") or {}
    rate, count = _rate(cfg), params.get("poison_count")
    if rate is not None:
        return f"{100 * rate:g} %"
    if isinstance(params.get("num_targets"), int) and isinstance(params.get("pairs_per_target"), int):
        return f"{params['num_targets']} victims × {params['pairs_per_target']}"  # targeted poisoning
    return f"{count} samples" if isinstance(count, int) else "—"


def is_clean(run: Run) -> bool:
    """A run without poisons: attack ``none``, a ``*-control`` attack (the clean model evaluated with an attack's
    trigger / victims), or zero poisons."""
    a = (run.results.get("config") or {}).get("attack") or {}
    p = a.get("params") or {}
    return a.get("name") == "none" or str(a.get("name", "")).endswith("-control") or p.get("poison_count") == 0


def attack_label(run: Run) -> str:
    name = ((run.results.get("config") or {}).get("attack") or {}).get("name", "none")
    if name == "none":
        return "no attack"
    if str(name).endswith("-control"):
        return f"none (clean-model control of {name[:-len('-control')]})"
    return str(name)


def settings(runs: Sequence[Run]) -> list[Setting]:
    """Finished runs grouped into settings (same config up to seed and name), in the order they first appear."""
    done = [r for r in runs if r.results is not None]
    ca_key = next((k for k in CA_KEYS if all(ca_of({k: r.results["metrics"].get(k)})[0] for r in done)),
                  None) or (ca_of(done[0].results["metrics"])[0] if done else None)
    vary = _varying(done)
    extra = [k for k in vary if not (k.startswith(("method.", "attack.", "defense.")) or k in ("data.name",))]
    methods = {((r.results["config"].get("method") or {}).get("name")) for r in done}
    groups: dict[tuple, Setting] = {}
    for r in done:
        cfg = r.results["config"]
        f = flat(cfg)
        key = tuple(repr(f.get(k)) for k in vary)
        if key not in groups:
            label: dict[str, Any] = {}
            if len(methods) > 1:
                label["Method"] = (cfg.get("method") or {}).get("name")
            label["Attack"] = attack_label(r)
            label["Defense"] = ((cfg.get("defense") or {}).get("name") or "none")
            label["Poisons"] = _poisons(r)
            for k in extra:
                label[k.split(".")[-1].replace("_", " ")] = f.get(k)
            groups[key] = Setting(key, label, [], ca_key)
        groups[key].runs.append(r)
    return list(groups.values())
