"""The short ``report.md`` every run writes beside its ``results.json``: what was run, the metrics, the per-epoch
history, the times and the environment — a page a person reads without opening JSON.

Example::

    >>> md = run_markdown({"name": "r", "config": {"seed": 0, "method": {"name": "simclr"}},
    ...                    "metrics": {"knn_top1": 0.5}, "timings": {"total_s": 3.0}, "history": []})
    >>> "| knn_top1 | 0.5000 |" in md
    True
"""

from __future__ import annotations

from typing import Any

from .tables import markdown_table


def _v(x: Any) -> str:
    return f"{x:.4f}" if isinstance(x, float) else str(x)


def run_markdown(res: dict[str, Any], max_epochs: int = 30) -> str:
    """Markdown summary of one run's ``results.json`` (at most ``max_epochs`` history rows: first and last)."""
    cfg = res.get("config") or {}
    name = lambda k: (cfg.get(k) or {}).get("name", "none")  # noqa: E731
    data = cfg.get("data") or {}
    lines = [f"# Run {res.get('name', '')}", "",
             f"method **{name('method')}**, attack **{name('attack')}**, defense **{name('defense')}**, seed "
             f"{cfg.get('seed')}, data {data.get('name')}{' (' + str(data['path']) + ')' if data.get('path') else ''}, "
             f"{(cfg.get('train') or {}).get('epochs')} epochs.", ""]
    excluded = (res.get("data") or {}).get("excluded_classes")
    if excluded:
        lines += [f"Classes kept out of pretraining (`data.exclude_classes`): {', '.join(excluded)}; the probe's "
                  "labelled split and the test split keep them.", ""]
    lines += ["## Metrics", ""]
    scalars = [(k, _v(v)) for k, v in sorted((res.get("metrics") or {}).items()) if not isinstance(v, (list, dict))]
    lines += [markdown_table(["metric", "value"], scalars), ""]
    hist = res.get("history") or []
    if hist:
        keys = ["epoch", "loss"] + sorted({k for h in hist for k in h if k.startswith("eval_")
                                           and isinstance(h[k], (int, float)) and k != "eval_seconds"})
        shown = hist if len(hist) <= max_epochs else hist[: max_epochs // 2] + hist[-max_epochs // 2:]
        lines += ["## Training", "", markdown_table(keys, [[_v(h.get(k, "")) for k in keys] for h in shown]), ""]
    t = res.get("timings") or {}
    lines += ["## Time", "", ", ".join(f"{k.replace('_s', '')} {v:.1f} s" for k, v in t.items()
                                        if isinstance(v, (int, float)) and not k.endswith("including_resumed")), ""]
    env = res.get("environment") or {}
    lines += ["## Environment", "", ", ".join(f"{k} {v}" for k, v in env.items()), "",
              "Full config, history and metrics: `results.json`; training log: `metrics.jsonl`.", ""]
    return "\n".join(lines)
