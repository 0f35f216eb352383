"""Optional TensorBoard output of the one training loop (``train.tensorboard: true``): every epoch record's numbers
(loss, throughput, epoch time, learning rate, periodic-evaluation metrics) as scalars under ``OUT/tensorboard/``,
x axis = epoch, written by rank 0 only. Needs the ``tensorboard`` package (``pip install tensorboard``); without it
the run stops before training with one line. A resumed run purges the events past its checkpoint, so no epoch is
plotted twice (the JSONL metrics log does the same).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Optional

from ..errors import ConfigError


def check_available() -> None:
    """One :class:`ConfigError` line when ``torch.utils.tensorboard`` cannot be imported."""
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        raise ConfigError("train.tensorboard=true needs the tensorboard package: pip install tensorboard "
                          "(or set train.tensorboard=false)") from None


class EpochScalars:
    """Writes the numeric fields of each epoch record; created lazily at the first epoch written."""

    def __init__(self, log_dir: Path) -> None:
        check_available()
        self.log_dir = Path(log_dir)
        self._writer: Optional[Any] = None

    def write(self, rec: Mapping[str, Any], lr: float, prefix: str = "train") -> None:
        epoch = int(rec["epoch"])
        if self._writer is None:  # purge anything logged past this point by a run that was interrupted
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.log_dir), purge_step=epoch)
        for key, value in {**rec, "lr": lr}.items():
            if key in ("epoch", "step") or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(float(value)):
                self._writer.add_scalar(f"{prefix}/{key}", float(value), epoch)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
