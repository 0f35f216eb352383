"""Reading a checkpoint file — the one place that does, for resuming a run and for ``clpoison evaluate`` /
``scan``. A checkpoint is the dict :meth:`~clpoison.engine.trainer.Trainer.state_dict` writes: ``model``,
``optimizer``, ``scheduler``, ``scaler``, ``rng``, ``epoch``, ``step``, ``history``, ``config`` (the run's config
snapshot), ``method`` and ``format_version``.

It still unpickles (the RNG states hold NumPy and Python objects), so it must only be given checkpoints you trust;
loading with ``weights_only=True`` is tracked in the reliability issue.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def read_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """The checkpoint dict stored at ``path``, tensors on ``map_location``."""
    return torch.load(Path(path), map_location=map_location, weights_only=False)
