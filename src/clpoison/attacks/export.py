"""Export a poisoned dataset to disk, for other trainers (open_clip, solo-learn) — ``clpoison poison``.

Layout of ``OUT`` (written into a temporary sibling folder, renamed into place at the end; the source is read only):

* caption data — ``train.csv`` and ``test.csv`` (columns ``filepath,title,label``; open_clip reads them with
  ``--csv-img-key filepath --csv-caption-key title``; an image with several captions has one row per caption) and
  the PNG files under ``images/train/`` and ``images/test/``;
  clpoison reads it back with ``data.name=captions-csv data.path=OUT/train.csv
  data.captions.test_path=OUT/test.csv data.captions.label_column=label``;
* image data — ``data.npz`` (``x_train, y_train, x_test, y_test, class_names``, and ``train_sizes`` /
  ``test_sizes`` when images of different sizes share a padded canvas, e.g. CorruptEncoder; ``data.name=npz``);
* ``manifest.json`` (see :mod:`clpoison.attacks.manifest`) and ``trigger.png`` when the attack has a trigger;
* ``SHA256SUMS`` — the sha256 of every other file (``clpoison verify OUT`` checks the export, see
  :mod:`clpoison.attacks.verify`).

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

import csv
import io
import os
import shutil
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..data.captions import CaptionDataset, CaptionSplits
from ..errors import ConfigError
from ..utils.faults import fault_point
from ..utils.io import check_output_path
from ..utils.lock import OutputLock, stale_partials
from .manifest import load_trigger, write_manifest
from .verify import write_sums


def _write_caption_split(ds: CaptionDataset, root: Path, split: str) -> None:
    from PIL import Image

    img_dir = root / "images" / split
    img_dir.mkdir(parents=True)
    width = max(6, len(str(len(ds))))
    sizes = ds.sizes
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["filepath", "title", "label"])
    for i in range(len(ds)):
        rel = f"images/{split}/{i:0{width}d}.png"
        img = ds.images[i]
        if sizes is not None:
            img = img[:, : int(sizes[i, 0]), : int(sizes[i, 1])]
        Image.fromarray(img.permute(1, 2, 0).contiguous().numpy()).save(root / rel, format="PNG")
        lab = ""
        if ds.labels is not None and int(ds.labels[i]) >= 0 and ds.class_names:
            lab = ds.class_names[int(ds.labels[i])]
        for c in ds.captions[i]:
            w.writerow([rel, c, lab])
    (root / f"{split}.csv").write_text(buf.getvalue(), encoding="utf-8")


def _write_npz(splits: Any, root: Path) -> None:
    with open(root / "data.npz", "wb") as f:
        sizes = {f"{k}_sizes": getattr(splits, k).sizes.numpy() for k in ("train", "test")
                 if getattr(getattr(splits, k), "sizes", None) is not None}  # padded canvas: each image's valid (h, w)
        np.savez(f, x_train=splits.train.images.numpy(), y_train=splits.train.labels.numpy(),
                 x_test=splits.test.images.numpy(), y_test=splits.test.labels.numpy(),
                 class_names=np.array(list(splits.class_names)), **sizes)


def export_poisoned(splits: Any, manifest: Optional[dict], out: str | Path, overwrite: bool = False,
                    artifacts: Optional[dict[str, bytes]] = None, lock: bool = True) -> Path:
    """Write ``splits`` (the poisoned dataset), its manifest and the attack's ``artifacts`` (file name -> bytes,
    e.g. a crafted noise ``delta.npz``) to ``out`` atomically; returns ``out``.

    The export holds the output's lock (:class:`~clpoison.utils.lock.OutputLock`; ``lock=False`` when the caller
    already does), so a concurrent export to the same ``out`` fails at once; hidden partials a killed export left
    (``.OUT.*partial``) are removed, and an existing ``out`` is refused unless ``overwrite``."""
    out = check_output_path(out, "dir")
    if not lock:
        return _export_locked(splits, manifest, out, overwrite, artifacts)
    with OutputLock(out):
        return _export_locked(splits, manifest, out, overwrite, artifacts)


def _export_locked(splits: Any, manifest: Optional[dict], out: Path, overwrite: bool,
                   artifacts: Optional[dict[str, bytes]]) -> Path:
    if out.exists() and not overwrite:
        raise ConfigError(f"output directory '{out}' already exists; pass --overwrite or choose another --out")
    for stale in stale_partials(out):  # we hold the lock: their writer is dead
        shutil.rmtree(stale, ignore_errors=True)
    tmp = out.with_name(f".{out.name}.partial")
    tmp.mkdir(parents=True)
    try:
        if isinstance(splits, CaptionSplits):
            _write_caption_split(splits.train, tmp, "train")
            _write_caption_split(splits.test, tmp, "test")
        else:
            _write_npz(splits, tmp)
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
