"""Export a poisoned dataset to disk, for other trainers (open_clip, solo-learn) — ``clpoison poison``.

Layout of ``OUT`` (written into a temporary sibling folder, renamed into place at the end; the source is read only):

* the data in the format asked for (:mod:`clpoison.poisoned.export_formats`): image data as ``data.npz`` (default)
  or an ImageFolder tree ``train/CLASS/NNNNNN.png`` + ``test/...``; caption data as open_clip's CSV layout
  (default: ``train.csv`` / ``test.csv``, tab-separated, columns ``filepath`` (absolute) / ``title`` / ``label``, PNGs
  under ``images/``; open_clip reads it with ``--csv-img-key filepath --csv-caption-key title``) or webdataset
  shards ``train-000000.tar`` / ``test-000000.tar``; clpoison reads the CSV back with
  ``data.name=captions-csv data.path=OUT/train.csv data.captions.test_path=OUT/test.csv
  data.captions.label_column=label`` (the tab separator is recognised from the header);
* ``test_triggered`` in the same format (``test_triggered.npz``, ``test_triggered/CLASS/*.png``,
  ``test_triggered.csv``, ``test_triggered-000000.tar``) when the attack has a trigger: the clean test split with
  the recorded trigger applied, to measure the attack success rate with any tool;
* ``manifest.json`` (see :mod:`clpoison.poisoned.manifest`) and ``trigger.png`` when the attack has a trigger;
* ``SHA256SUMS`` — the sha256 of every other file (``clpoison verify OUT`` checks the export, see
  :mod:`clpoison.poisoned.verify`).

Example::

    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> from clpoison.data.datasets import ImageDataset, ImageSplits
    >>> ds = ImageDataset(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.tensor([0, 1]), ["a", "b"])
    >>> out = Path(tempfile.mkdtemp()) / "poisoned"
    >>> sorted(p.name for p in export_poisoned(ImageSplits(ds, ds), {"trigger": None}, out).iterdir())
    ['SHA256SUMS', 'data.npz', 'manifest.json']
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Optional

from ..data.captions import CaptionSplits
from ..errors import ConfigError
from ..utils.faults import fault_point
from ..utils.io import check_output_path, check_replaceable
from ..utils.lock import OutputLock, stale_partials
from .export_formats import CAPTION_FORMATS, IMAGE_FORMATS, triggered_test, write_split
from .manifest import load_trigger, write_manifest
from .verify import write_sums


def export_poisoned(splits: Any, manifest: Optional[dict], out: str | Path, overwrite: bool = False,
                    artifacts: Optional[dict[str, bytes]] = None, lock: bool = True, fmt: Optional[str] = None,
                    csv_separator: str = "\t", csv_paths: str = "absolute",
                    copies: Optional[dict[str, dict[int, str]]] = None) -> Path:
    """Write ``splits`` (the poisoned dataset), its manifest and the attack's ``artifacts`` (file name -> bytes,
    e.g. a crafted noise ``delta.npz``) to ``out`` atomically; returns ``out``.

    The export holds the output's lock (:class:`~clpoison.utils.lock.OutputLock`; ``lock=False`` when the caller
    already does), so a concurrent export to the same ``out`` fails at once; hidden partials a killed export left
    (``.OUT.*partial``) are removed, and an existing ``out`` is refused unless ``overwrite``. ``fmt`` is one of
    :mod:`~clpoison.poisoned.export_formats`' formats (default ``npz`` for images, ``csv`` for captions);
    ``copies`` (:func:`~clpoison.poisoned.export_formats.untouched_files`) names the rows copied byte for byte."""
    out = check_output_path(out, "dir")
    fmt = check_format(isinstance(splits, CaptionSplits), fmt, csv_separator, csv_paths)
    opts = {"fmt": fmt, "csv_separator": csv_separator, "csv_paths": csv_paths, "copies": copies or {}}
    if not lock:
        return _export_locked(splits, manifest, out, overwrite, artifacts, opts)
    with OutputLock(out):
        return _export_locked(splits, manifest, out, overwrite, artifacts, opts)


def check_format(captions: bool, fmt: Optional[str] = None, csv_separator: str = "\t",
                 csv_paths: str = "absolute") -> str:
    """The export format (the default when ``fmt`` is None) for image–caption data (``captions``) or image data;
    one ConfigError line if it does not fit the data or an option is bad."""
    allowed = CAPTION_FORMATS if captions else IMAGE_FORMATS
    fmt = fmt or allowed[0]
    if fmt not in allowed:
        raise ConfigError(f"export format '{fmt}' does not fit {'image-caption' if captions else 'image'} data; "
                          f"choose one of: {', '.join(allowed)}")
    if len(csv_separator) != 1 or csv_separator in "\n\r\"":
        raise ConfigError(f"CSV separator {csv_separator!r} must be one character other than a newline or quote")
    if csv_paths not in ("absolute", "relative"):
        raise ConfigError(f"CSV paths '{csv_paths}' unknown; choose absolute or relative")
    return fmt


def _export_locked(splits: Any, manifest: Optional[dict], out: Path, overwrite: bool,
                   artifacts: Optional[dict[str, bytes]], opts: dict) -> Path:
    if out.exists() and not overwrite:
        msg = f"output directory '{out}' already exists; pass"
        raise ConfigError(f"{msg} overwrite=True or choose another output directory",
                          cli=f"{msg} --overwrite or choose another --out")
    check_replaceable(out, ("manifest.json", "SHA256SUMS"), "poisoned-dataset export")
    for stale in stale_partials(out):  # we hold the lock: their writer is dead
        shutil.rmtree(stale, ignore_errors=True)
    tmp = out.with_name(f".{out.name}.partial")
    tmp.mkdir(parents=True)
    try:
        fmt, sep, paths = opts["fmt"], opts["csv_separator"], opts["csv_paths"]
        copies = opts["copies"]
        write_split(tmp, splits, splits.train, "train", fmt, out, sep, paths, copies.get("train"))
        if fmt != "npz":  # data.npz holds both splits
            write_split(tmp, splits, splits.test, "test", fmt, out, sep, paths, copies.get("test"))
        triggered = triggered_test(splits, manifest) if manifest is not None else None
        if triggered is not None:
            write_split(tmp, splits, triggered, "test_triggered", fmt, out, sep, paths)
        fault_point("export-data")
        if manifest is not None:
            trigger = load_trigger(manifest)
            if trigger is not None:
                (tmp / "trigger.png").write_bytes(trigger.png())
            write_manifest(tmp / "manifest.json", manifest)
        for name, data in (artifacts or {}).items():
            (tmp / name).write_bytes(data)
        write_sums(tmp)  # SHA256SUMS of every file: `clpoison verify` checks them
        _fsync_tree(tmp)
        if out.exists():
            shutil.rmtree(out)
        fault_point("publish-export")
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _fsync_tree(root: Path) -> None:
    """Flush every file under ``root`` to disk before the rename publishes it."""
    for p in root.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
