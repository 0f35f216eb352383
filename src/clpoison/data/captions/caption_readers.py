"""Readers for image–caption data: CSV/TSV files and webdataset-style tar shards, plus the caption source registry.

Sources (config ``data.name`` when ``method.name: clip``):

* ``captions-csv`` — a CSV or TSV (``.tsv`` or ``data.captions.separator: "\\t"``) with an image-path column and a
  caption column, named by ``data.captions.image_column`` / ``caption_column`` (default ``filepath`` / ``title``,
  as open_clip's ``--csv-img-key`` / ``--csv-caption-key``). Paths are relative to the CSV's folder. Rows that
  name the same image give it several captions (one is sampled per epoch). An optional ``label_column`` names a
  class per row, which enables zero-shot evaluation on the test split; with a separate ``test_path`` the training
  file may lack that column (training never reads labels; a labelled evaluation set can also come from
  ``eval.sets``, :mod:`clpoison.experiments.eval_sets`).
* ``captions-tar`` — tar shards in the webdataset layout: ``KEY.jpg|jpeg|png|webp`` next to ``KEY.txt`` (files of
  one sample adjacent in the archive). ``data.path`` is a shard, a folder of ``*.tar`` or a glob. Shards are
  read as a stream (``tarfile`` mode ``r|*``, never seeking); each non-empty line of ``KEY.txt`` is one caption.
* any image source of :data:`~clpoison.data.image_readers.SOURCES` with labels (``cifar10-subset``, ``npz``,
  ``cifar``, ``imagefolder``) — captioned by :mod:`~clpoison.data.captions.caption_generator` (synthetic stand-in
  captions).

Without ``data.captions.test_path``, a seeded ``test_fraction`` of the images is held out as the test split.
Images are decoded once, resized (shorter side, centre crop) to ``data.image_size`` (default: ``augment.out_size``)
and kept resident as uint8.

**Bad input** gives one line naming the file and the row (CSV line number, or shard and member):
missing columns always fail; a missing or corrupt image, an empty caption or non-UTF-8 text fails when
``data.captions.on_error: fail`` (the default) and is skipped and *counted* with ``on_error: skip`` — the counts are
returned in ``splits.source["skipped"]``, written to ``results.json`` and echoed, never silent. Over-long captions
are not an error: the tokenizer truncates them to the context length (see :mod:`clpoison.data.captions.tokenizer`).

Example::

    >>> import tempfile, numpy as np
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> from clpoison.data.captions.caption_readers import read_caption_csv
    >>> d = Path(tempfile.mkdtemp())
    >>> Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(d / "a.png")
    >>> _ = (d / "pairs.csv").write_text("filepath,title\\na.png,a black square\\n")
    >>> ds, skipped = read_caption_csv(d / "pairs.csv", image_size=8)
    >>> ds.captions, dict(skipped)
    ([['a black square']], {})
"""

from __future__ import annotations

import csv
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Union

import torch

from ...errors import ConfigError, DataError
from ...registry import Registry
from ..image_readers import SOURCES, decode_image
from .caption_dataset import CaptionDataset, CaptionSplits
from .caption_generator import CaptionGeneratorConfig, caption_image_splits
from .caption_rows import RowErrors, rows_dataset
from .caption_shards import read_caption_shards


@dataclass
class CaptionDataConfig:
    """``data.captions``: how image–caption data is read (or generated)."""

    image_column: str = "filepath"
    caption_column: str = "title"
    label_column: Optional[str] = None
    separator: Optional[str] = None  # None: "\t" for .tsv or a header with tabs and no comma, "," otherwise
    on_error: str = "fail"  # fail | skip (skipped rows are counted and reported)
    test_path: Optional[str] = None
    test_fraction: float = 0.1
    augment: str = "translate"  # translate | rrc | none (see clpoison.data.captions.caption_loader)
    translate_px: int = 4
    stream: bool = False  # captions-tar: stream the train shards (decoded in loader workers) instead of loading them
    workers: int = 2  # streaming: loader worker processes per training process
    shuffle_buffer: int = 1000  # streaming: samples shuffled in a buffer of this size (0: shard order)
    generator: CaptionGeneratorConfig = field(default_factory=CaptionGeneratorConfig)

    def __post_init__(self) -> None:
        if self.on_error not in ("fail", "skip"):
            raise ConfigError(f"data.captions.on_error='{self.on_error}' unknown; choose fail or skip")
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"data.captions.test_fraction={self.test_fraction} must lie in (0, 1)")
        if self.augment not in ("translate", "rrc", "none"):
            raise ConfigError(f"data.captions.augment='{self.augment}' unknown; choose translate, rrc or none")
        if self.translate_px < 0:
            raise ConfigError(f"data.captions.translate_px={self.translate_px} must be >= 0")
        if self.workers < 0 or self.shuffle_buffer < 0:
            raise ConfigError("data.captions.workers and data.captions.shuffle_buffer must be >= 0")
        if self.separator is not None and len(self.separator) != 1:
            raise ConfigError(f"data.captions.separator={self.separator!r} must be one character (e.g. ',' or '\\t')")


def _decode_lines(raw: bytes, path: Path, errors: RowErrors) -> list[str]:
    lines = []
    for i, line in enumerate(raw.splitlines(keepends=True), 1):
        try:
            lines.append(line.decode("utf-8"))
        except UnicodeDecodeError:
            errors("non_utf8", f"{path}:{i}", "text is not valid UTF-8")
    return lines


def read_caption_csv(
    path: Union[str, Path],
    image_column: str = "filepath",
    caption_column: str = "title",
    label_column: Optional[str] = None,
    separator: Optional[str] = None,
    on_error: str = "fail",
    image_size: Optional[int] = 32,
    name: Optional[str] = None,
    label_optional: bool = False,
) -> tuple[CaptionDataset, dict]:
    """Read a CSV/TSV of (image path, caption) rows into a resident :class:`CaptionDataset`; returns it and the
    skip counts. Row numbers in messages are line numbers of the file (the header is line 1). ``label_optional``:
    a file without the ``label_column`` is read unlabelled (training captions need no labels)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"caption file '{p}' does not exist; check data.path")
    errors = RowErrors(on_error)
    lines = _decode_lines(p.read_bytes(), p, errors)
    if lines and lines[0].startswith("\ufeff"):
        lines[0] = lines[0][1:]
    tabbed = bool(lines) and "\t" in lines[0] and "," not in lines[0]  # a tab-separated header (open_clip's layout)
    sep = separator or ("\t" if p.suffix.lower() == ".tsv" or tabbed else ",")
    reader = csv.reader(lines, delimiter=sep)
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(f"caption file '{p}' is empty; it needs a header row with '{image_column}' and '{caption_column}'") from None
    header = [h.strip() for h in header]
    if label_optional and label_column and label_column not in header:
        label_column = None
    want = [image_column, caption_column] + ([label_column] if label_column else [])
    missing = [c for c in want if c not in header]
    if missing:
        raise DataError(
            f"{p}:1: missing column(s) {missing}; the header has {header}. Set data.captions.image_column / "
            f"caption_column / label_column (separator {sep!r}; use data.captions.separator for another one)"
        )
    ci, cc = header.index(image_column), header.index(caption_column)
    cl = header.index(label_column) if label_column else None
    groups: "OrderedDict[str, tuple[list[str], Optional[str], str]]" = OrderedDict()
    for row in reader:
        where = f"{p}:{reader.line_num}"
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) <= max(ci, cc, cl or 0):
            errors("short_row", where, f"row has {len(row)} fields, fewer than the header's {len(header)}")
            continue
        img, cap = row[ci].strip(), row[cc].strip()
        if not cap:
            errors("empty_caption", where, f"empty caption for image '{img}'")
            continue
        if not img:
            errors("missing_image", where, "empty image path")
            continue
        label = row[cl].strip() if cl is not None else None
        if img in groups:
            groups[img][0].append(cap)
        else:
            groups[img] = ([cap], label, where)
    images, captions, labels, files = [], [], [], []
    for img, (caps, label, where) in groups.items():
        ip = (p.parent / img) if not os.path.isabs(img) else Path(img)
        if not ip.is_file():
            errors("missing_image", where, f"image '{ip}' does not exist")
            continue
        try:
            images.append(decode_image(ip, image_size))
        except DataError:
            errors("corrupt_image", where, f"image '{ip}' is unreadable or corrupt")
            continue
        captions.append(caps)
        labels.append(label)
        files.append(str(ip.resolve()))
    if not images:
        raise DataError(f"caption file '{p}' yields no usable image–caption pair (skipped: {dict(errors.counts)}); check it")
    ds = rows_dataset(images, captions, labels, name or p.stem, cl is not None,
                       files if image_size is None else None)  # native size: the exporter may copy the files
    return ds, errors.report(str(p))


# ------------------------------------------------------------------------------------------------------------------
# sources

CAPTION_SOURCES: Registry[Callable[..., CaptionSplits]] = Registry("caption dataset")


def _holdout(ds: CaptionDataset, fraction: float, seed: int) -> tuple[CaptionDataset, CaptionDataset]:
    if len(ds) < 2:
        raise DataError(f"{ds.name}: {len(ds)} pair(s) cannot be split into train and test; add data or set data.captions.test_path")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(ds), generator=g)
    n_test = min(len(ds) - 1, max(1, int(round(fraction * len(ds)))))
    return ds.subset(perm[n_test:].sort().values, f"{ds.name}/train"), ds.subset(perm[:n_test].sort().values, f"{ds.name}/test")


def _file_source(reader: Callable, kind: str):
    def load(path: Optional[str], cfg: CaptionDataConfig, image_size: int, seed: int) -> CaptionSplits:
        if not path:
            raise DataError(f"data.name={kind} needs data.path (the {'CSV/TSV file' if kind == 'captions-csv' else 'tar shards'})")
        train, sk_train = reader(path, cfg, image_size, "train")
        if cfg.test_path:
            test, sk_test = reader(cfg.test_path, cfg, image_size, "test")
        else:
            train, test = _holdout(train, cfg.test_fraction, seed)
            sk_test = {}
        if test.class_names and train.class_names and test.class_names != train.class_names:
            names = sorted(set(train.class_names) | set(test.class_names))
            for ds in (train, test):
                ds.labels = torch.tensor([names.index(ds.class_names[i]) if i >= 0 else -1 for i in ds.labels.tolist()])
                ds.class_names = list(names)
        return CaptionSplits(train, test, {"name": kind, "path": str(path), "test_path": cfg.test_path,
                                           "skipped": {"train": sk_train, "test": sk_test}})

    return load


def _csv_reader(path, cfg: CaptionDataConfig, size, split):
    # with a separate test file, the training file may lack the label column (only evaluation reads labels)
    return read_caption_csv(path, cfg.image_column, cfg.caption_column, cfg.label_column, cfg.separator, cfg.on_error,
                            size, split, label_optional=split == "train" and bool(cfg.test_path))


def _tar_reader(path, cfg: CaptionDataConfig, size, split):
    return read_caption_shards(path, cfg.on_error, size, split)


CAPTION_SOURCES.add("captions-csv", _file_source(_csv_reader, "captions-csv"))
CAPTION_SOURCES.add("captions-tar", _file_source(_tar_reader, "captions-tar"))
FILE_READERS = {"captions-csv": _csv_reader, "captions-tar": _tar_reader}


def read_caption_file(name: str, path: str, cfg: CaptionDataConfig = CaptionDataConfig(),
                      image_size: Optional[int] = None, split: str = "train") -> tuple[CaptionDataset, dict]:
    """Every usable row of one caption file (``captions-csv``) or set of shards (``captions-tar``), in file order,
    nothing held out (what ``clpoison scan`` scores: row ``i`` is the manifest's index ``i``); and the skip counts."""
    if name not in FILE_READERS:
        raise ConfigError(f"'{name}' is not a caption file source; choose one of: {', '.join(FILE_READERS)}")
    return FILE_READERS[name](path, cfg, image_size, split)



def caption_source_names() -> list[str]:
    return sorted(set(CAPTION_SOURCES.names()) | set(SOURCES.names()))


def load_caption_splits(
    name: str, path: Optional[str] = None, cfg: CaptionDataConfig = CaptionDataConfig(), image_size: Optional[int] = None,
    seed: int = 0,
) -> CaptionSplits:
    """Caption data by source name: a file source, or a labelled image source captioned by the generator."""
    if name in CAPTION_SOURCES:
        return CAPTION_SOURCES.get(name)(path, cfg, image_size, seed)  # None: native sizes (padded canvas)
    if name not in SOURCES:
        raise ConfigError(f"unknown caption dataset '{name}'; choose one of: {', '.join(caption_source_names())}")
    kwargs = {"image_size": image_size} if image_size is not None else {}
    images = SOURCES.get(name)(path=path, seed=seed, **kwargs)
    return caption_image_splits(images, cfg.generator, seed)
