"""Tables of results: the run summary printed by the CLI, Markdown tables of the benchmark JSON files, and the
metric curves stored in a run's history.

Example::

    >>> print(format_table({"metrics": {"knn_top1": 0.5}, "timings": {"pretrain_s": 2.0, "total_s": 3.0}}))
    metric             value
    ---------------------------
    knn_top1           0.5000
    pretrain time (s)  2.0
    total time (s)     3.0
"""

from __future__ import annotations

from typing import Any, Sequence


def format_table(results: dict[str, Any]) -> str:
    """Metrics and times of one run's ``results.json``, aligned in two columns."""
    rows = [("metric", "value")] + [
        (k, f"{v:.4f}" if isinstance(v, float) else str(v)) for k, v in sorted(results["metrics"].items())
    ]
    rows.append(("pretrain time (s)", f"{results['timings'].get('pretrain_s', float('nan')):.1f}"))
    rows.append(("total time (s)", f"{results['timings'].get('total_s', float('nan')):.1f}"))
    w = max(len(r[0]) for r in rows)
    lines = [f"{a:<{w}}  {b}" for a, b in rows]
    lines.insert(1, "-" * (w + 10))
    return "\n".join(lines)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table."""
    out = ["| " + " | ".join(map(str, header)) + " |", "|" + " --- |" * len(header)]
    out += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(out)


def pm(d: dict, scale: float = 1.0, digits: int = 3) -> str:
    """``mean ± std`` of a ``{"mean", "std"}`` entry."""
    return f"{d['mean'] * scale:.{digits}f} ± {d['std'] * scale:.{digits}f}"


def history_curve(results: dict[str, Any], *metrics: str) -> dict[str, list]:
    """``{"epochs": [...], METRIC: [...]}`` from a run's periodic evaluations (``eval.every_epochs``: the history's
    ``eval_METRIC`` entries) plus its final metrics (the last epoch)."""
    first = f"eval_{metrics[0]}"
    out: dict[str, list] = {"epochs": [h["epoch"] for h in results["history"] if first in h]}
    for m in metrics:
        out[m] = [h.get(f"eval_{m}") for h in results["history"] if first in h]
    out["epochs"].append(results["history"][-1]["epoch"])
    for m in metrics:
        out[m].append(results["metrics"].get(m))
    return out


def throughput_table(res: dict) -> str:
    """``benchmarks/throughput.py`` JSON as Markdown."""
    rows = []
    for m in ("simclr", "mocov2", "byol"):
        if m in res:
            r = res[m]
            rows.append([m, f"{r['images_per_s']:.0f}", f"{r['bare_images_per_s']:.0f}", f"{r['ratio']:.2f}",
                         f"{r['baseline_images_per_s']:.0f}", f"{r['speedup_over_baseline']:.1f}×"])
    env = res.get("environment", {})
    table = markdown_table(["method", "end-to-end images/s", "bare backbone fwd+bwd images/s", "ratio",
                            "per-image DataLoader baseline images/s", "speed-up"], rows)
    return (table + f"\n\nDevice: {env.get('device')}, {env.get('threads')} threads, torch {env.get('torch')}, median of "
            f"{env.get('rounds')} alternating rounds of {env.get('steps_per_round')} steps.")


def ssl_table(res: dict) -> str:
    """``benchmarks/ssl_small.py`` JSON as Markdown."""
    rows = [[r["preset"], pm(r["knn_top1"]), pm(r["linear_top1"]), pm(r["knn_top1_random_init"]), pm(r["wall_s"], digits=0)]
            for m in ("simclr", "mocov2", "byol") if m in res for r in [res[m]]]
    table = markdown_table(["preset", "kNN top-1", "linear top-1", "kNN top-1 at random init", "wall time (s)"], rows)
    return table + f"\n\n{res['seeds']} seeds (0..{res['seeds'] - 1}), mean ± std."
