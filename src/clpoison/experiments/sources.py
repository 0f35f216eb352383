"""Loading a run's data from what a user names: a registered source (``cifar10-subset``, ``npz``,
``captions-csv``, ...) with its path, or directly a path whose form tells the source — the one place that
turns names and paths into splits, for the tasks and for ``clpoison poison`` / ``scan``.

Path forms: ``*.csv`` / ``*.tsv`` → ``captions-csv``, ``*.tar`` → ``captions-tar``, ``*.npz`` → ``npz``, a
folder → ``imagefolder``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

from ..data.captions.caption_readers import FILE_READERS, CaptionDataConfig, load_caption_splits, read_caption_file
from ..data.captions.caption_shards import read_caption_shards
from ..data.captions.caption_source_info import csv_columns
from ..data.datasets import ImageSplits, exclude_classes, hold_out_per_class, limit, per_class_subset, random_subset
from ..data.image_readers import SOURCES, load_dataset
from ..errors import ConfigError, DataError

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
                      test_limit: Optional[int] = None, downstream_fraction: float = 0.0,
                      excluded: Sequence[Any] = ()) -> ImageSplits:
    """Labelled image splits of a registered image source, optionally cut to the first ``*_limit`` images, with
    ``downstream_fraction`` of each class held out of training as the labelled downstream split and the
    ``excluded`` classes kept out of pretraining (:func:`~clpoison.data.datasets.exclude_classes`)."""
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
    if excluded:
        splits = exclude_classes(splits, excluded)
    return splits


def subset_train(ds: Any, per_class: Optional[int], count: Optional[int], seed: int) -> Any:
    """``data.train_per_class`` (class-balanced, labelled data) or ``data.train_subset`` (any data), seeded."""
    if per_class is not None:
        if getattr(ds, "labels", None) is None:
            raise ConfigError("data.train_per_class needs labelled training data; use data.train_subset for captions "
                              "without labels")
        return per_class_subset(ds, per_class, seed)
    if count is not None:
        return random_subset(ds, count, seed)
    return ds


def load_source(kind: str, data: str, path: Optional[str] = None, image_size: Optional[int] = None, seed: int = 0,
                label_column: Optional[str] = None, test_path: Optional[str] = None,
                caption_options: Optional[dict] = None) -> Any:
    """Clean data named on the command line: ``kind`` is a modality, ``image-text`` (CaptionSplits) or ``image``
    (ImageSplits; also ``any``); ``data`` a source name or a path (:func:`resolve_source`); ``caption_options`` more fields of
    :class:`~clpoison.data.captions.caption_readers.CaptionDataConfig` (``separator``, ``image_column``, ...)."""
    name, path = resolve_source(data, path)
    if kind == "image-text":
        cfg = CaptionDataConfig(label_column=label_column, test_path=test_path, **(caption_options or {}))
        return load_caption_splits(name, path, cfg, image_size, seed)
    if name not in SOURCES:
        raise ConfigError(f"unknown image dataset '{name}'; choose one of: {', '.join(SOURCES.names())}")
    return load_image_source(name, path, seed, image_size)


def load_scan_data(data: str, path: Optional[str] = None, image_size: Optional[int] = None, seed: int = 0,
                   label_column: Optional[str] = None, test_path: Optional[str] = None,
                   caption_options: Optional[dict] = None, split: str = "train",
                   export_labels: bool = False) -> tuple[Any, str]:
    """``(CaptionDataset, description)`` of exactly the pairs ``clpoison scan`` is pointed at. A caption file
    (CSV/TSV or tar shards) is read whole, rows in file order, nothing held out (``--split test`` reads
    ``test_path``); a generated source (``cifar10-subset``, ...) gives its ``split``. ``export_labels``: read a
    CSV's ``label`` column when no ``label_column`` is given and the file has one (an export's layout, so its
    fingerprint can be checked against the manifest)."""
    name, path = resolve_source(data, path)
    opts = dict(caption_options or {})
    if name in FILE_READERS:
        file = path
        if split == "test":
            if not test_path:
                raise ConfigError("--split test on a caption file needs --test-path (or pass the test file as --data)")
            file = test_path
        if not file:
            raise ConfigError(f"data.name={name} needs a path; pass --data FILE")
        if export_labels and label_column is None and name == "captions-csv" and \
                "label" in csv_columns(file, opts.get("separator")):
            label_column = "label"
        cfg = CaptionDataConfig(label_column=label_column, **opts)
        if export_labels and name == "captions-tar":  # an export's KEY.cls class indices (named from the manifest)
            ds, skipped = read_caption_shards(file, cfg.on_error, image_size, split, cls_labels=True)
        else:
            ds, skipped = read_caption_file(name, file, cfg, image_size, split)
        where = f"'{file}'"
        if any(skipped.values()):
            where += f" (skipped rows: {dict(skipped)})"
        return ds, where
    splits = load_source("image-text", data, path, image_size, seed, label_column, test_path, caption_options)
    return (splits.train if split == "train" else splits.test), f"the {split} split of '{data}'"


def load_export(root: str | Path) -> Any:
    """The poisoned dataset a ``clpoison poison`` export folder holds, as written (no resizing), for the data
    fingerprint check: ``data.npz`` or ``train.csv`` / ``test.csv`` (with their ``label`` column). ``None`` for the
    ImageFolder and webdataset layouts: their files are checked by ``SHA256SUMS`` only."""
    root = Path(root)
    if (root / "data.npz").is_file():
        return load_image_source("npz", str(root / "data.npz"), 0, None)
    if (root / "train.csv").is_file():
        cfg = CaptionDataConfig(label_column="label", test_path=str(root / "test.csv"))
        return load_caption_splits("captions-csv", str(root / "train.csv"), cfg, None, 0)
    if (root / "train").is_dir() or (root / "train-000000.tar").is_file():
        return None
    raise DataError(f"'{root}' holds no data.npz, train.csv, train/ or train-000000.tar; pass the folder "
                    "`clpoison poison` wrote")


def verify_if_export(path: Optional[str], splits: Any, as_written: bool) -> Optional[dict]:
    """If ``path`` (``data.path``) is a ``clpoison poison`` export — a folder, or its ``data.npz`` / ``train.csv``,
    beside a ``manifest.json`` — verify it before use (:func:`clpoison.poisoned.verify.verify_export`: file hashes,
    indices, trigger, and, for an NPZ loaded ``as_written`` — no limits, no resizing — the data fingerprint).
    Returns the summary, or ``None`` when the data is not an export."""
    from ..poisoned.verify import verify_export

    if not path or any(c in str(path) for c in "*?[{"):
        return None
    p = Path(path).expanduser()
    root = p if p.is_dir() else p.parent
    if not (root / "manifest.json").is_file() or not ((root / "data.npz").is_file() or (root / "train.csv").is_file()):
        return None
    exact = as_written and (root / "data.npz").is_file() and p.suffix == ".npz"
    return verify_export(root, splits if exact else None, require_sums=False)
