"""Timing for benchmarks: variants measured in alternating rounds, so slow drifts of the machine (CPU frequency,
other processes) hit every variant alike; the reported figure is the median seconds per step.

Example::

    >>> med = interleaved({"a": (lambda _: None, iter(range(100)))}, rounds=3, steps=5, device=None)
    >>> med["a"] >= 0
    True
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterator, Optional

import torch


def sync(device: Optional[torch.device]) -> None:
    """Wait for queued CUDA work (a no-op elsewhere) so that wall time covers it."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize()


def interleaved(runs: dict[str, tuple[Callable[[Any], Any], Iterator]], rounds: int, steps: int,
                device: Optional[torch.device]) -> dict[str, float]:
    """Median seconds per step of each ``(step_fn, batch iterator)`` in ``runs``, measured in alternating rounds
    of ``steps`` steps after 3 warm-up steps each."""
    iters = {k: iter(b) for k, (_, b) in runs.items()}
    for k, (fn, _) in runs.items():  # warm-up
        for _ in range(3):
            fn(next(iters[k]))
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for k, (fn, _) in runs.items():
            sync(device)
            t = time.perf_counter()
            for _ in range(steps):
                fn(next(iters[k]))
            sync(device)
            times[k].append((time.perf_counter() - t) / steps)
    return {k: sorted(v)[len(v) // 2] for k, v in times.items()}


def cycle(epoch_fn: Callable[[int], Iterator]) -> Iterator:
    """Endless batches from ``epoch_fn(0)``, ``epoch_fn(1)``, ..."""
    e = 0
    while True:
        yield from epoch_fn(e)
        e += 1


def forever(value: Any = None) -> Iterator:
    """An endless iterator of ``value`` (for steps that need no batch)."""
    while True:
        yield value


def timed_steps(step: Callable[[Any], Any], batches: Any, n_warm: int, n: int, device: Optional[torch.device]) -> float:
    """Seconds for ``n`` calls of ``step`` on successive batches, after ``n_warm`` warm-up calls."""
    it = iter(batches)
    for _ in range(n_warm):
        step(next(it))
    sync(device)
    t = time.perf_counter()
    for _ in range(n):
        step(next(it))
    sync(device)
    return time.perf_counter() - t
