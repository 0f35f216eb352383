"""Plots of runs and benchmarks (matplotlib, Agg backend; PNG written atomically).

* :func:`similarity_histogram` — image–caption similarities with the poisons marked (SafeCLIP, ``clpoison scan``);
* :func:`curve_plot` — one or more metric curves (e.g. ASR against poison rate or against epochs) with optional
  per-seed points.

Example::

    >>> import tempfile, numpy as np
    >>> from pathlib import Path
    >>> p = curve_plot(Path(tempfile.mkdtemp()) / "asr.png", {"mean": ([0, 1, 2], [0.1, 0.5, 0.9])},
    ...                "poison rate (%)", "ASR", "demo", ylim=(0, 1))
    >>> p.stat().st_size > 0
    True
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from ..utils.io import atomic_write_bytes


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (no display needed); one ConfigError line when
    matplotlib (the optional ``plots`` extra) is not installed."""
    try:
        import matplotlib
    except ImportError:
        from ..errors import ConfigError

        raise ConfigError("plots need matplotlib, which is not installed; pip install matplotlib") from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path, dpi: int = 110) -> Path:
    """Write ``fig`` as PNG to ``path`` atomically (a reader never sees half a file) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=dpi)
    pyplot().close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def similarity_histogram(path: Path, sims: np.ndarray, poisons: Optional[np.ndarray], title: str,
                         cut: Optional[float] = None) -> Path:
    """PNG histogram of similarities, clean vs poisons, on a **log count axis** (a 1 % poison set is invisible
    beside the other pairs on a linear one). ``cut`` = the lowest similarity in the safe set, drawn as a vertical
    line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = np.zeros(len(sims), bool)
    if poisons is not None and len(poisons):
        mask[poisons[poisons < len(sims)]] = True
    bins = np.linspace(float(sims.min()) - 1e-6, float(sims.max()) + 1e-6, 41)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(sims[~mask], bins=bins, alpha=0.7, label=f"other pairs ({int((~mask).sum())})")
    if mask.any():
        ax.hist(sims[mask], bins=bins, alpha=0.8, color="red", label=f"poisons ({int(mask.sum())})")
    if cut is not None:
        ax.axvline(cut, color="k", ls="--", lw=1, label="safe-set cut")
    ax.set_xlabel("cosine similarity (image, caption)")
    ax.set_yscale("log")
    ax.set_ylabel("pairs (log scale)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    return save_figure(fig, path, dpi=100)


def curve_plot(path: Path, curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], xlabel: str, ylabel: str,
               title: str, ylim: Optional[tuple[float, float]] = None,
               points: Optional[Sequence[tuple[Sequence[float], Sequence[float]]]] = None, points_label: str = "per seed",
               logx: bool = False, dpi: int = 110) -> Path:
    """Lines ``label -> (xs, ys)``, optional grey ``points`` (e.g. one series per seed), to a PNG."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, (xs, ys) in curves.items():
        ax.plot(list(xs), list(ys), "o-", ms=3, label=label)
    for i, (xs, ys) in enumerate(points or ()):
        ax.scatter(list(xs), list(ys), color="grey", s=12, alpha=0.7, label=points_label if i == 0 else None)
    if logx:  # ticks at the measured x values, written plainly (a log axis would label 6×10^0, 3×10^1, ...)
        ax.set_xscale("log")
        ticks = sorted({float(x) for xs, _ in curves.values() for x in xs if float(x) > 0})
        ax.set_xticks(ticks, [f"{x:g}" for x in ticks])
        ax.minorticks_off()
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    return save_figure(fig, path, dpi)
