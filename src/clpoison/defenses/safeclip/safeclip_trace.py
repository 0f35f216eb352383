"""SafeCLIP's poison trace: where the known poisons stand in every similarity pass, so a user sees early whether the
defense is catching them (and, after the run, why it did not).

When the run has a manifest with poison indices, every epoch whose split has similarity scores (each filtering
epoch; with ``trace_warmup`` also every warm-up epoch after the first, at the cost of one similarity pass each)
records, for each poison, its **rank** — its position in the descending order of image–caption similarity over
all pairs, as a fraction of the pairs (0 = the best-aligned pair, near 1 = the worst; a poison is in the safe set
roughly when its rank is below the safe fraction) — and whether it is in the **risky** set (in a warm-up epoch:
whether the first filtering split's rule, the GMM posterior threshold, would put it there). No extra forward pass
in the filtering epochs: the scores are the split's own.

The entries go to ``safeclip/poison_trace.jsonl`` in the run folder, one JSON line per epoch (``epoch``, ``phase``,
``poisons``, ``rank``, ``risky``, ``recall``, ``rank_median``, ``safe_fraction``); the epoch record gets the
summary (``safeclip_poison_rank_median``, ``safeclip_poison_rank_mean``), and the run prints one line per epoch.

Example::

    >>> import numpy as np
    >>> rank_fractions(np.array([0.9, 0.1, 0.5, 0.7])).tolist()
    [0.0, 0.75, 0.5, 0.25]
    >>> t = PoisonTrace(np.array([1, 2]))
    >>> e = t.record(3, "filtered", np.array([0.9, 0.1, 0.5, 0.7]), np.array([1]), 0.5)
    >>> e["rank"], e["risky"], e["recall"]
    ([0.75, 0.5], [1, 0], 0.5)
    >>> t.line(e)
    'safeclip epoch 4 (filtered): poisons in the risky set 1/2 (recall 0.50), median poison rank 0.62 (0 = best aligned), safe fraction 0.50'
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ...utils.io import atomic_write_text

TRACE_FILE = "safeclip/poison_trace.jsonl"


def rank_fractions(similarities: np.ndarray) -> np.ndarray:
    """Each pair's position in the descending similarity order divided by the number of pairs (0 = most similar)."""
    s = np.asarray(similarities, dtype=np.float64)
    pos = np.empty(len(s), dtype=np.float64)
    pos[np.argsort(-s, kind="stable")] = np.arange(len(s))
    return pos / max(len(s), 1)


class PoisonTrace:
    """The poisons' ranks and risky membership per epoch, kept in memory and (with ``path``) in a JSONL file."""

    def __init__(self, poisons: np.ndarray, path: Optional[Path] = None) -> None:
        self.poisons = np.asarray(poisons, dtype=np.int64)
        self.path = None if path is None else Path(path)
        self.entries: list[dict[str, Any]] = []

    def record(self, epoch: int, phase: str, similarities: np.ndarray, risky: np.ndarray,
               safe_fraction: float) -> dict[str, Any]:
        """The entry of 0-based ``epoch`` (written as ``epoch + 1``, as the epoch records): ranks of the poisons in
        ``similarities`` and whether each is in ``risky`` (indices of the risky pairs)."""
        ranks = rank_fractions(similarities)[self.poisons]
        in_risky = np.isin(self.poisons, np.asarray(risky, dtype=np.int64))
        entry = {"epoch": epoch + 1, "phase": phase, "poisons": self.poisons.tolist(),
                 "rank": [round(float(r), 5) for r in ranks], "risky": in_risky.astype(int).tolist(),
                 "recall": float(in_risky.mean()) if len(in_risky) else float("nan"),
                 "rank_median": float(np.median(ranks)) if len(ranks) else float("nan"),
                 "rank_mean": float(ranks.mean()) if len(ranks) else float("nan"),
                 "safe_fraction": round(float(safe_fraction), 6)}
        self.entries = [e for e in self.entries if e["epoch"] < entry["epoch"]] + [entry]
        return entry

    @staticmethod
    def line(entry: dict[str, Any]) -> str:
        """The one-line summary of an entry."""
        hit, n = sum(entry["risky"]), len(entry["risky"])
        where = "risky set" if entry["phase"] == "filtered" else "risky set if filtering started now"
        return (f"safeclip epoch {entry['epoch']} ({entry['phase']}): poisons in the {where} {hit}/{n} "
                f"(recall {entry['recall']:.2f}), median poison rank {entry['rank_median']:.2f} (0 = best aligned), "
                f"safe fraction {entry['safe_fraction']:.2f}")

    @staticmethod
    def summary(entry: dict[str, Any]) -> dict[str, float]:
        """What the epoch record gets."""
        return {"safeclip_poison_rank_median": round(entry["rank_median"], 6),
                "safeclip_poison_rank_mean": round(entry["rank_mean"], 6)}

    def write(self) -> None:
        """The file holds every entry so far; a resumed run keeps the earlier epochs' lines from the file."""
        if self.path is None:
            return
        first = self.entries[0]["epoch"] if self.entries else 0
        kept = [e for e in read_trace(self.path) if e["epoch"] < first] if self.path.exists() else []
        atomic_write_text(self.path, "".join(json.dumps(e) + "\n" for e in kept + self.entries))


def read_trace(path: Path) -> list[dict[str, Any]]:
    """The entries of a ``poison_trace.jsonl`` (a run folder's ``safeclip/poison_trace.jsonl``)."""
    p = Path(path)
    if p.is_dir():
        p = p / TRACE_FILE
    return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
