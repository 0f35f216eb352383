"""Loading a run's data from what a user names: a registered source (``cifar10-subset``, ``npz``,
``captions-csv``, ...) with its path, or directly a path whose form tells the source — the one place that
turns names and paths into splits, for the tasks and for ``clpoison poison`` / ``scan``.

Path forms: ``*.csv`` / ``*.tsv`` → ``captions-csv``, ``*.tar`` → ``captions-tar``, ``*.npz`` → ``npz``, a
folder → ``imagefolder``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from ..data.caption_readers import CaptionDataConfig, load_caption_splits
from ..data.datasets import ImageSplits, hold_out_per_class, limit
from ..data.image_readers import SOURCES, load_dataset
from ..errors import ConfigError

_BY_SUFFIX = {".csv": "captions-csv", ".tsv": "captions-csv", ".tar": "captions-tar", ".npz": "npz"}


def resolve_source(data: str, path: Optional[str] = None) -> tuple[str, Optional[str]]:
    """``(source name, path)`` for ``--data``: a source name (``path`` then locates it) or a path."""
    p = Path(data).expanduser()
    if path is None and (p.exists() or p.suffix.lower() in _BY_SUFFIX):
        if not p.exists():
            raise ConfigError(f"--data '{p}' does not exist; check the path")
        name = _BY_SUFFIX.get(p.suffix.lower(), "imagefolder" if p.is_dir() else None)
        if name is None:
            raise ConfigError(f"--data '{p}': cannot tell the format from the name; give a source name and --data-path")
        return name, str(p)
    return data, path


def load_image_source(name: str, path: Optional[str], seed: int, image_size: Optional[int] = None,
                      max_resident_bytes: Optional[int] = None, train_limit: Optional[int] = None,
                      test_limit: Optional[int] = None, downstream_fraction: float = 0.0) -> ImageSplits:
    """Labelled image splits of a registered image source, optionally cut to the first ``*_limit`` images, with
    ``downstream_fraction`` of each class held out of training as the labelled downstream split."""
    kwargs: dict[str, Any] = {}
    if max_resident_bytes is not None:
        kwargs["max_resident_bytes"] = max_resident_bytes
    if image_size is not None:
        kwargs["image_size"] = image_size
    splits = load_dataset(name, path, seed=seed, **kwargs)
    splits.train = limit(splits.train, train_limit)
    splits.test = limit(splits.test, test_limit)
    if downstream_fraction:
        splits.train, splits.downstream = hold_out_per_class(splits.train, downstream_fraction)
    return splits


def load_source(kind: str, data: str, path: Optional[str] = None, image_size: Optional[int] = None, seed: int = 0,
                label_column: Optional[str] = None, test_path: Optional[str] = None) -> Any:
    """Clean data named on the command line: ``kind`` is ``captions`` (CaptionSplits) or ``images``
    (ImageSplits); ``data`` a source name or a path (:func:`resolve_source`)."""
    name, path = resolve_source(data, path)
    if kind == "captions":
        cfg = CaptionDataConfig(label_column=label_column, test_path=test_path)
        return load_caption_splits(name, path, cfg, image_size, seed)
    if name not in SOURCES:
        raise ConfigError(f"unknown image dataset '{name}'; choose one of: {', '.join(SOURCES.names())}")
    return load_image_source(name, path, seed, image_size)
