"""CLIP model files: both towers of a trained clpoison CLIP as ``clip.safetensors`` (tensors only, so reading one
never runs code) plus ``clip.json`` (``format`` ``"clpoison-clip"``, ``format_version`` 1, the run's config
snapshot and the caption tokenizer as its JSON string). Every CLIP run writes the pair beside
``encoder.safetensors`` (the image tower alone, which cannot score captions); ``clpoison scan`` and
``--reference`` accept it, as they accept a run folder or its ``checkpoint.pt``.

Example::

    >>> import tempfile, torch
    >>> d = tempfile.mkdtemp()
    >>> _ = save_clip_model(d, {"w": torch.ones(2), "_extra_state": {"tokenizer": "{}"}}, {"method": {"name": "clip"}})
    >>> ckpt = read_clip_model(d)
    >>> sorted(ckpt["model"]), ckpt["model"]["_extra_state"], ckpt["method"]
    (['_extra_state', 'w'], {'tokenizer': '{}'}, 'clip')
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch

from ..errors import DataError
from ..run_folder import CHECKPOINT, CLIP, CLIP_SPEC, holds
from ..utils.io import atomic_write_bytes, atomic_write_json

WEIGHTS_NAME = CLIP
SPEC_NAME = CLIP_SPEC
FORMAT = "clpoison-clip"


def save_clip_model(folder: str | Path, state: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """Write ``folder/clip.safetensors`` + ``folder/clip.json`` atomically from a CLIP method's ``state_dict()``
    (its ``_extra_state`` — the tokenizer — goes to the JSON); returns the spec written."""
    from safetensors.torch import save

    folder = Path(folder)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items() if isinstance(v, torch.Tensor)}
    extra = {k: v for k, v in state.items() if not isinstance(v, torch.Tensor)}
    spec = {"format": FORMAT, "format_version": 1, "weights": WEIGHTS_NAME, "extra_state": extra,
            "config": dict(config)}
    atomic_write_bytes(folder / WEIGHTS_NAME, save(tensors, metadata={"format": FORMAT}))
    atomic_write_json(folder / SPEC_NAME, spec)
    return spec


def is_clip_model(path: str | Path) -> bool:
    """Whether ``path`` is a ``clip.safetensors`` / ``clip.json`` or a folder holding them and no checkpoint."""
    path = Path(path)
    if path.is_dir():
        return holds(path, WEIGHTS_NAME) and not holds(path, CHECKPOINT)
    return path.name in (WEIGHTS_NAME, SPEC_NAME)


def read_clip_model(path: str | Path) -> dict[str, Any]:
    """A checkpoint-shaped dict (``config``, ``method``, ``model``) of a CLIP model file; one :class:`DataError`
    line when the pair is missing or unreadable."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    folder = path if path.is_dir() else path.parent
    weights, spec_path = folder / WEIGHTS_NAME, folder / SPEC_NAME
    for p in (weights, spec_path):
        if not p.is_file():
            raise DataError(f"CLIP model '{folder}' lacks {p.name}; pass a CLIP run's folder, its checkpoint.pt or "
                            f"the {WEIGHTS_NAME} + {SPEC_NAME} pair it wrote")
    try:
        spec = json.loads(spec_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"'{spec_path}' is not JSON ({type(e).__name__})") from None
    if not isinstance(spec, dict) or spec.get("format") != FORMAT or not isinstance(spec.get("config"), dict):
        raise DataError(f"'{spec_path}' is not a clpoison clip.json (format must be '{FORMAT}', with a config)")
    try:
        state: dict[str, Any] = dict(load_file(str(weights)))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise DataError(f"'{weights}' is not a readable safetensors file ({type(e).__name__})") from None
    state.update(spec.get("extra_state") or {})
    config = spec["config"]
    return {"config": config, "model": state, "method": (config.get("method") or {}).get("name")}
