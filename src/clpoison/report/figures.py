"""The report's plots (matplotlib, Agg): attack success rate against poison rate (or count) per defense, clean accuracy
against attack success rate, targeted success per setting, attack success rate (linear and kNN) and Δcos against
epochs (from ``eval.every_epochs`` histories), Contrastive Poisoning's crafting trace (the loss gap against rounds,
from the manifests), and the plots the runs already made (e.g. SafeCLIP's similarity histograms).
Titles and axis labels are plain words, never config keys.

Each function returns ``[(title, path)]`` of the PNGs it wrote (nothing when the runs hold no such data).
"""

from __future__ import annotations

import json
import math
import statistics
import textwrap
from pathlib import Path
from typing import Optional, Sequence

from ..errors import ConfigError
from .aggregate import Setting, is_clean
from .plots import curve_plot, pyplot, save_figure

Figure = tuple[str, Path]


def _word(k: str, v: object) -> str:
    if k == "Defense":
        return "no defense" if v == "none" else f"defense {v}"
    if k == "Poisons":
        return "no poisons" if v == "0" else f"{v} poisoned"
    return str(v) if k in ("Attack", "Method") else f"{k} {v}"


def _name(s: Setting, skip: Sequence[str] = ()) -> str:
    """A setting in words, e.g. ``carlini-backdoor, no defense, 1 % poisoned``."""
    return ", ".join(_word(k, v) for k, v in s.label.items() if k not in skip and v not in (None, "—"))


def _series_key(s: Setting) -> str:
    return _name(s, ("Poisons",))


def use_log_x(values: Sequence[float]) -> bool:
    """A log axis when the positive values span a decade or more (e.g. poison rates 0.1 % … 2 %)."""
    pos = [v for v in values if v > 0]
    return len(pos) >= 2 and max(pos) / min(pos) >= 10


DOSE_AXES = ("auto", "rate", "count")


def poison_count(run) -> Optional[int]:
    """A run's number of poisons: ``attack.params.poison_count``, else its manifest's (``details.poison_count``, or
    the poisoned and added rows)."""
    c = ((run.results.get("config") or {}).get("attack") or {}).get("params", {}).get("poison_count")
    if isinstance(c, int) and not isinstance(c, bool):
        return c
    try:
        man = json.loads((Path(run.path) / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    n = (man.get("details") or {}).get("poison_count")
    if isinstance(n, int):
        return n
    rows = list(man.get("poisoned_indices") or []) + list(man.get("added_indices") or [])
    return len(rows) or None


def _dose(s: Setting, axis: str) -> Optional[float]:
    if axis == "count":
        n = poison_count(s.runs[0])
        return None if n is None else float(n)
    rate = s.runs[0].results["config"].get("attack", {}).get("params", {}).get("poison_rate")
    return 100 * float(rate) if isinstance(rate, (int, float)) and not isinstance(rate, bool) else None


def asr_vs_rate(sets: Sequence[Setting], folder: Path, axis: str = "auto") -> list[Figure]:
    """One line per attack and defense: mean ASR over seeds against the poison rate (%) — or, with ``axis="count"``,
    against the number of poisons — each seed a grey point; the clean model's ASR as a dashed line. ``auto``: counts
    when every poisoned setting gives ``poison_count`` and none a rate. Log x axis when the doses span a decade."""
    if axis not in DOSE_AXES:
        raise ConfigError(f"dose axis '{axis}' unknown; choose {', '.join(DOSE_AXES)}")
    clean = [s for s in sets if all(is_clean(r) for r in s.runs) and s.values("asr")]
    poisoned = [s for s in sets if s not in clean and s.values("asr")]
    if axis == "auto":
        params = [s.runs[0].results["config"].get("attack", {}).get("params", {}) for s in poisoned]
        by_count = bool(params) and all(isinstance(p.get("poison_count"), int) and p.get("poison_rate") is None
                                        for p in params)
        axis = "count" if by_count else "rate"
    lines: dict[str, list[tuple[float, Setting]]] = {}
    for s in poisoned:
        x = _dose(s, axis)
        if x is not None:
            lines.setdefault(_series_key(s), []).append((x, s))
    doses = sorted({x for pts in lines.values() for x, _ in pts})
    if len(doses) < 2:
        return []
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, pts in lines.items():
        pts.sort(key=lambda p: p[0])
        ax.plot([x for x, _ in pts], [statistics.fmean(s.values("asr")) for _, s in pts], "o-", label=label)
        for x, s in pts:
            ax.scatter([x] * len(s.values("asr")), s.values("asr"), color="grey", s=10, alpha=0.6, zorder=3)
    for s in clean:
        ax.axhline(statistics.fmean(s.values("asr")), ls="--", lw=1, color="k",
                   label=f"clean model ({_word('Defense', s.label.get('Defense'))})" if len(clean) > 1 else "clean model")
    if use_log_x(doses):
        ax.set_xscale("log")
        ax.set_xticks(doses, [f"{r:g}" for r in doses])
        ax.minorticks_off()
    what = "count" if axis == "count" else "rate"
    ax.set_xlabel("Poisoned pairs or images (count)" if axis == "count" else "Poisoned share of the training data (%)")
    ax.set_ylabel("Attack success rate")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"Attack success rate against poison {what} (mean over seeds; grey: each seed)", fontsize=9)
    ax.legend(fontsize=7)
    return [(f"Attack success rate against poison {what}", save_figure(fig, folder / f"asr_vs_poison_{what}.png"))]


def ca_vs_asr(sets: Sequence[Setting], folder: Path) -> list[Figure]:
    """Each setting's mean clean accuracy against its mean ASR (error bars: std over seeds)."""
    pts = [(s, s.summary("asr"), s.summary("ca")) for s in sets]
    pts = [p for p in pts if p[1] and p[2]]
    if not pts:
        return []
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2 + 0.16 * len(pts)))
    for i, (s, a, c) in enumerate(pts):
        ax.errorbar(a["mean"], c["mean"], xerr=a["std"], yerr=c["std"], fmt="o", ms=5, capsize=2,
                    label=f"{i + 1}: {_name(s)}")
        ax.annotate(str(i + 1), (a["mean"], c["mean"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel("Attack success rate")
    ax.set_ylabel("Clean accuracy")
    ax.set_xlim(-0.02, 1.02)
    ax.set_title("Clean accuracy against attack success rate (mean ± std over seeds)", fontsize=9)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), frameon=False)
    return [("Clean accuracy against attack success rate", save_figure(fig, folder / "ca_vs_asr.png"))]


def targeted_bars(sets: Sequence[Setting], folder: Path) -> list[Figure]:
    """Targeted success per setting with its Wilson 95 % interval."""
    rows = [(s, s.summary("targeted_success_rate")) for s in sets]
    rows = [r for r in rows if r[1]]
    if not rows:
        return []
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, max(2.4, 1.2 + 0.45 * len(rows))))
    ys = list(range(len(rows)))
    means = [r[1]["mean"] for r in rows]
    err = [[m - (r[1]["ci"] or (m, m))[0] for m, r in zip(means, rows)],
           [(r[1]["ci"] or (m, m))[1] - m for m, r in zip(means, rows)]]
    ax.barh(ys, means, xerr=err, capsize=3, color="tab:orange")
    ax.set_yticks(ys, [textwrap.fill(_name(r[0]), 32) for r in rows], fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_xlabel("Share of victims given the attacker's label\n(bars: 95 % Wilson interval)")
    ax.set_title("Targeted poisoning success", fontsize=9)
    return [("Targeted poisoning success", save_figure(fig, folder / "targeted_success.png"))]


#: What the report plots against epochs: (metric, file, axis label, title, y-limits).
EPOCH_METRICS = (
    ("asr", "asr_vs_epoch.png", "Attack success rate", "Attack success rate during training (mean over seeds)",
     (-0.02, 1.02)),
    ("asr_knn", "asr_knn_vs_epoch.png", "Attack success rate (kNN)",
     "kNN attack success rate during training (mean over seeds)", (-0.02, 1.02)),
    ("delta_cos", "delta_cos_vs_epoch.png", "Δ cosine to the target centroid",
     "Triggered minus clean cosine to the target class (mean over seeds)", None),
)


def _epoch_curve(s: Setting, metric: str) -> tuple[list[int], list[float]]:
    """Mean over the setting's runs of ``eval_METRIC`` per epoch, plus each run's final ``METRIC``."""
    by_epoch: dict[int, list[float]] = {}
    for r in s.runs:
        hist = r.results.get("history") or []
        pts = [(h["epoch"], h[f"eval_{metric}"]) for h in hist if isinstance(h.get(f"eval_{metric}"), (int, float))]
        if pts and isinstance(r.results["metrics"].get(metric), (int, float)):
            pts.append((hist[-1]["epoch"], r.results["metrics"][metric]))
        for e, v in pts:
            if math.isfinite(v):
                by_epoch.setdefault(int(e), []).append(float(v))
    pts = sorted((e, statistics.fmean(v)) for e, v in by_epoch.items())
    return [e for e, _ in pts], [v for _, v in pts]


def asr_vs_epoch(sets: Sequence[Setting], folder: Path) -> list[Figure]:
    """ASR, kNN ASR and Δcos (each where the runs recorded it) against epochs, mean over seeds, from the periodic
    evaluations (``eval_asr``, ``eval_asr_knn``, ``eval_delta_cos``) of each setting's runs; the mismatched-trigger
    control (``*_mismatched``) of the same runs as its own line."""
    out: list[Figure] = []
    for metric, file, ylabel, title, ylim in EPOCH_METRICS:
        curves = {}
        for s in sets:
            for key, label in ((metric, _name(s)), (f"{metric}_mismatched", f"{_name(s)} — mismatched trigger")):
                xs, ys = _epoch_curve(s, key)
                if len(xs) >= 2:
                    curves[label] = (xs, ys)
        if curves:
            out.append((f"{ylabel} against epochs",
                        curve_plot(folder / file, curves, "Epoch", ylabel, title, ylim=ylim)))
    return out


def _traces(run_path: Path) -> dict[str, dict]:
    """The crafting traces in a run's ``manifest.json`` (``details.trace``; a CP-S made from a CP-C crafted in the
    same run also has ``details.init.trace``), keyed by the attack that made them."""
    try:
        man = json.loads((Path(run_path) / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    d = man.get("details") if isinstance(man, dict) else None
    if not isinstance(d, dict) or not isinstance(d.get("trace"), dict):
        return {}
    out = {str(man.get("attack", {}).get("name", "attack")): d["trace"]}
    init = d.get("init")
    if isinstance(init, dict) and isinstance(init.get("trace"), dict):
        out[f"{init.get('attack', 'init')} stage"] = init["trace"]
    return out


def crafting_trace(sets: Sequence[Setting], folder: Path) -> list[Figure]:
    """Contrastive Poisoning's loss gap ``L(x + εδ) − L(x)`` against crafting rounds (mean over seeds), one line per
    setting and crafting stage (a CP-S made from a CP-C shows both)."""
    curves = {}
    for s in sets:
        by_stage: dict[str, dict[int, list[float]]] = {}
        for r in s.runs:
            for stage, tr in _traces(r.path).items():
                for rnd, gap in zip(tr.get("rounds") or [], tr.get("loss_gap") or []):
                    if isinstance(gap, (int, float)) and math.isfinite(gap):
                        by_stage.setdefault(stage, {}).setdefault(int(rnd), []).append(float(gap))
        for stage, pts in by_stage.items():
            xs = sorted(pts)
            curves[f"{_name(s)} ({stage})"] = (xs, [statistics.fmean(pts[x]) for x in xs])
    if not curves:
        return []
    return [("Contrastive Poisoning crafting trace",
             curve_plot(folder / "crafting_trace.png", curves, "Crafting round", "Loss gap L(x+εδ) − L(x) (nats)",
                        "Crafting trace: the poisoned minus the clean loss (mean over seeds)"))]


def run_plots(sets: Sequence[Setting], limit: int = 6) -> list[Figure]:
    """The PNGs the runs wrote themselves (e.g. a defense's diagnostics such as SafeCLIP's similarity histograms):
    the last one of each kind from the first run of each setting, at most ``limit``."""
    out: list[Figure] = []
    for s in sets:
        run = s.runs[0]
        kinds: dict[str, Path] = {}
        for p in sorted(Path(run.path).glob("*/*.png")):  # plots in a defense's sub-folder (not trigger.png)
            kinds[str(p.parent.relative_to(run.path))] = p  # sorted: the last epoch's plot of each folder
        for sub, p in kinds.items():
            if len(out) < limit:
                out.append((f"{_name(s)} — {sub}: {p.stem.replace('_', ' ')}", p))
    return out
