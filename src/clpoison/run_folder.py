"""The files of a run folder, and the one reader of "run folder or file → the file": every command and component
that takes "a run folder or its checkpoint" (``clpoison evaluate`` / ``scan`` / ``inspect``, CleanCLIP's
``defense.params.checkpoint``, NLB's attacker ``encoder``, :func:`clpoison.load_run`) resolves it here.

    >>> import tempfile, pathlib
    >>> run = pathlib.Path(tempfile.mkdtemp()); (run / CHECKPOINT).write_bytes(b"")
    0
    >>> run_file(run, CHECKPOINT) == run / CHECKPOINT and run_file(run / CHECKPOINT, CHECKPOINT) == run / CHECKPOINT
    True
    >>> holds(run, CHECKPOINT), holds(run, ENCODER)
    (True, False)
    >>> checkpoint_file(run / "missing")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    clpoison.errors.ConfigError: checkpoint '...missing' does not exist; pass a run directory or its checkpoint.pt
"""

from __future__ import annotations

from pathlib import Path

from .errors import ConfigError

CHECKPOINT = "checkpoint.pt"  # the training checkpoint (engine/trainer.py)
RESULTS = "results.json"  # what a finished run reports (experiments/runner.py)
ENCODER = "encoder.safetensors"  # the image encoder, weights only (models/encoder_file.py) ...
ENCODER_SPEC = "encoder.json"  # ... and its architecture and preprocessing
CLIP = "clip.safetensors"  # both CLIP towers (models/clip_file.py) ...
CLIP_SPEC = "clip.json"  # ... and the run's config


def run_file(path: str | Path, name: str) -> Path:
    """The file ``name`` of the run folder ``path``; ``path`` itself when it is not a folder."""
    p = Path(path).expanduser()
    return p / name if p.is_dir() else p


def holds(path: str | Path, name: str) -> bool:
    """Whether ``path`` is a folder holding the file ``name``."""
    p = Path(path).expanduser()
    return p.is_dir() and (p / name).is_file()


def checkpoint_file(path: str | Path, what: str = "checkpoint",
                    fix: str = f"pass a run directory or its {CHECKPOINT}") -> Path:
    """The checkpoint of a run folder (or the checkpoint file itself); one :class:`ConfigError` line
    ``WHAT 'PATH' does not exist; FIX`` when there is none."""
    p = run_file(path, CHECKPOINT)
    if not p.is_file():
        raise ConfigError(f"{what} '{p}' does not exist; {fix}")
    return p
