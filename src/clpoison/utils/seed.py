"""Seeding and RNG-state capture for exact resume.

:func:`get_rng_state` returns only tensors and plain Python types (ints, floats, lists, dicts), so a checkpoint
holding it loads with ``torch.load(..., weights_only=True)`` — no pickled NumPy or Python objects, nothing that
can run code when read. :func:`set_rng_state` restores exactly what :func:`get_rng_state` captured.

Example::

    >>> import random
    >>> s = get_rng_state(); a = random.random(); set_rng_state(s); a == random.random()
    True
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import torch


def seed_everything(seed: int, deterministic: bool = True) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed % (2**64))
    if deterministic:
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def get_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) RNG states as tensors and plain types (safe for ``weights_only`` loading)."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": int(version), "state": torch.tensor(mt, dtype=torch.int64),
                   "gauss": None if gauss is None else float(gauss)},
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the states :func:`get_rng_state` captured (tensors may live on any device)."""
    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["kind"], npy["keys"].cpu().numpy().astype(np.uint32), int(npy["pos"]),
                         int(npy["has_gauss"]), float(npy["cached_gaussian"])))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


@contextmanager
def rng_preserved() -> Iterator[None]:
    """Run the block without moving any RNG (Python, NumPy, torch, CUDA): what an evaluation in the middle of a run
    draws (a probe's initialisation, a shuffle) must not change the training that follows.

    >>> _ = torch.manual_seed(0); a = torch.rand(1); _ = torch.manual_seed(0)
    >>> with rng_preserved():
    ...     _ = torch.rand(5)
    >>> torch.equal(torch.rand(1), a)
    True
    """
    state = get_rng_state()
    try:
        yield
    finally:
        set_rng_state(state)
