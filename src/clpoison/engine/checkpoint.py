"""Reading a checkpoint file — the one place that does, for resuming a run and for ``clpoison evaluate`` /
``scan``. A checkpoint is the dict :meth:`~clpoison.engine.trainer.Trainer.state_dict` writes: ``model``,
``optimizer``, ``scheduler``, ``scaler``, ``rng``, ``epoch``, ``step``, ``history``, ``config`` (the run's config
snapshot), ``fingerprint`` (the data and poison it was trained on, see :mod:`clpoison.experiments.fingerprint`),
``method`` and ``format_version`` (2).

It holds only tensors and plain Python types (the RNG states are tensors and lists, see
:func:`clpoison.utils.seed.get_rng_state`), so it is read with ``torch.load(..., weights_only=True)``: a file
whose pickle would import or call anything else (e.g. ``os.system``) is refused with one
:class:`~clpoison.errors.DataError` line before anything runs.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..errors import DataError


def read_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """The checkpoint dict stored at ``path``, tensors on ``map_location``; loaded with ``weights_only=True``.

    Raises :class:`DataError` (one line) if the file is missing, is not a torch checkpoint, holds anything but
    tensors and plain types (refused unexecuted), or is not a dict."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"checkpoint '{path}' is a directory; pass a run directory holding checkpoint.pt or the file")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise DataError(f"checkpoint '{path}' does not exist; pass a run directory or its checkpoint.pt") from None
    except pickle.UnpicklingError as e:
        what = _unsafe_reason(str(e))
        raise DataError(f"checkpoint '{path}' was refused: it holds objects other than tensors and plain types "
                        f"({what}); only load clpoison checkpoints") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, AttributeError, KeyError) as e:
        raise DataError(f"checkpoint '{path}' cannot be read ({type(e).__name__}); is it a clpoison checkpoint?") from None
    if not isinstance(ckpt, dict):
        raise DataError(f"checkpoint '{path}' holds a {type(ckpt).__name__}, not a clpoison checkpoint dict")
    return ckpt


def _unsafe_reason(msg: str) -> str:
    """The part of torch's weights_only error that names the refused global (``GLOBAL posix.system ...``)."""
    for line in msg.splitlines():
        if "GLOBAL" in line:
            line = line.strip()
            return line[line.index("GLOBAL"):].split(". ")[0].rstrip(".")[:200]
    return "unsupported pickle content"
