"""The small Python API for finished runs and encoder files: :func:`load_run` and :func:`load_encoder`.

Example::

    >>> import clpoison
    >>> callable(clpoison.load_run) and callable(clpoison.load_encoder)
    True
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from torch import nn

from .errors import DataError
from .models.encoder_file import load_encoder as _load_encoder
from .run_folder import ENCODER, ENCODER_SPEC, RESULTS, holds


@dataclass
class Run:
    """A finished run: its ``config`` snapshot, ``metrics``, the whole ``results`` dict and the frozen ``encoder``
    (``None`` for a run written before encoder files existed) with its ``encoder_spec``."""

    path: Path
    config: dict[str, Any]
    metrics: dict[str, Any]
    results: dict[str, Any]
    encoder: Optional[nn.Module]
    encoder_spec: Optional[dict[str, Any]]


def load_encoder(path: str | Path, model: Optional[Mapping[str, Any]] = None) -> tuple[nn.Module, dict[str, Any]]:
    """``(encoder, spec)``: a clpoison ``encoder.safetensors`` (or its folder), a torchvision-layout ResNet state
    dict or an open_clip model state dict (its image tower), on the CPU in eval mode; ``spec`` holds the
    architecture and preprocessing (see :mod:`clpoison.models.encoder_file`). ``model`` sets what foreign weights
    do not record (``stem_stride``; open_clip's ``heads``, ``activation``). Raises
    :class:`~clpoison.errors.DataError` on anything else."""
    return _load_encoder(path, model)


def load_run(path: str | Path) -> Run:
    """The finished run in folder ``path`` (``results.json``, ``encoder.safetensors`` + ``encoder.json``)."""
    path = Path(path)
    res_path = path / RESULTS
    if not res_path.is_file():
        raise DataError(f"'{path}' holds no results.json; is it a finished clpoison run folder?")
    try:
        results = json.loads(res_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"'{res_path}' is not JSON ({type(e).__name__})") from None
    if not isinstance(results, dict):
        raise DataError(f"'{res_path}' does not hold a results object")
    encoder, spec = None, None
    if holds(path, ENCODER) and holds(path, ENCODER_SPEC):
        encoder, spec = _load_encoder(path / ENCODER)
    return Run(path, results.get("config") or {}, results.get("metrics") or {}, results, encoder, spec)
