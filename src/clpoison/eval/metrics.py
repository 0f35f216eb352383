"""Metric definitions shared by every experiment (one definition each)."""

from __future__ import annotations

import torch


def top1_accuracy(pred: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of predictions equal to the labels, in [0, 1]."""
    if len(pred) != len(labels):
        raise ValueError(f"{len(pred)} predictions but {len(labels)} labels")
    if len(labels) == 0:
        return float("nan")
    return float((pred.cpu() == labels.cpu()).float().mean())
