"""The file layouts a poisoned dataset is written in, one writer per format; :mod:`clpoison.poisoned.export` picks
one (``clpoison poison --format``) and adds the manifest, trigger and ``SHA256SUMS``.

Image data (``ImageSplits``):

* ``npz`` (default) — ``data.npz`` (``x_train, y_train, x_test, y_test, class_names`` and ``train_sizes`` /
  ``test_sizes`` when images of different sizes share a padded canvas); clpoison's ``npz`` source reads it;
* ``imagefolder`` — ``train/CLASS/NNNNNN.png`` and ``test/CLASS/NNNNNN.png``, one PNG per image at its own valid
  size (CorruptEncoder composites are wider), ``NNNNNN`` its row in the split (the manifest's indices); read by
  ``torchvision.datasets.ImageFolder``, solo-learn, lightly and clpoison's ``imagefolder`` source.

Caption data (``CaptionSplits``):

* ``csv`` (default) — ``train.csv`` / ``test.csv`` with columns ``filepath``, ``title``, ``label``, separated by a
  tab (open_clip's default ``--csv-separator``) unless ``csv_separator`` says otherwise; ``filepath`` is absolute
  (so open_clip reads it from any working directory) unless ``csv_paths="relative"`` (relative to the CSV's
  folder: run open_clip from inside ``OUT``); images are ``images/SPLIT/NNNNNN.png``; one row per caption;
* ``wds`` — webdataset tar shards ``train-000000.tar``, ``test-000000.tar`` (``shard_size`` samples each) holding
  ``NNNNNN.png`` + ``NNNNNN.txt`` (the image's captions, one a line) + ``NNNNNN.cls`` (class index, when labelled).

Untouched caption images (neither poisoned nor added; the whole test split) that were read from files at their
native size (a caption CSV read without ``--image-size``) are copied byte for byte with their own extension; every
other image (poisons, composites, resized images, images decoded from tar shards or NPZ arrays) is written as a
lossless PNG of its pixels at its own valid size.

:func:`write_triggered_test` adds the triggered test set in the same format (``test_triggered``): every test image
with the attack's recorded trigger applied (``trigger.apply`` with the attack's ``eval_seed``), labels and captions
unchanged, so any tool can measure the attack success rate.
"""

from __future__ import annotations

import csv
import io
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

import numpy as np

from ..data.captions import CaptionDataset
from ..data.captions.caption_shards import image_file, index_digits, png_bytes, write_caption_shards
from ..errors import ClpoisonError
from .manifest import load_trigger

IMAGE_FORMATS = ("npz", "imagefolder")
CAPTION_FORMATS = ("csv", "wds")


def _label_name(ds: Any, i: int) -> str:
    if ds.labels is None or int(ds.labels[i]) < 0 or not ds.class_names:
        return ""
    return ds.class_names[int(ds.labels[i])]


def write_npz(root: Path, splits: Any, name: str = "data.npz", with_train: bool = True) -> None:
    """``root/name``: the NPZ layout (NHWC is not used: ``x_*`` are uint8 NCHW as clpoison holds them)."""
    parts: dict[str, Any] = {"class_names": np.array(list(splits.class_names))}
    for k in ("train", "test") if with_train else ("test",):
        ds = getattr(splits, k)
        parts[f"x_{k}"], parts[f"y_{k}"] = ds.images.numpy(), ds.labels.numpy()
        if getattr(ds, "sizes", None) is not None:  # padded canvas: each image's valid (h, w)
            parts[f"{k}_sizes"] = ds.sizes.numpy()
    with open(root / name, "wb") as f:
        np.savez(f, **parts)


def _folder_name(name: str) -> str:
    return name.replace("/", "_").replace("\\", "_").strip(". ") or "_"


def write_imagefolder_split(root: Path, ds: Any, split: str) -> None:
    """``root/split/CLASS/NNNNNN.png``, one PNG per image at its valid size."""
    width = index_digits(len(ds))
    names = [_folder_name(c) for c in ds.class_names]
    for c in names:
        (root / split / c).mkdir(parents=True, exist_ok=True)
    sizes = getattr(ds, "sizes", None)
    for i in range(len(ds)):
        (root / split / names[int(ds.labels[i])] / f"{i:0{width}d}.png").write_bytes(
            png_bytes(ds.images[i], None if sizes is None else sizes[i]))


def untouched_files(source: Any, output: Any, manifest: Optional[dict]) -> dict[str, dict[int, str]]:
    """``{split: {row: source file}}`` for the rows of ``output`` that are the source's images unchanged (not
    poisoned, not added; the whole test split) and were read from files at native size — copied byte for byte."""
    out: dict[str, dict[int, str]] = {}
    if manifest is None:
        return out
    poisoned = {int(i) for i in manifest.get("poisoned_indices") or []}
    for split in ("train", "test"):
        src, dst = getattr(source, split, None), getattr(output, split, None)
        files = getattr(src, "files", None)
        if files is None or dst is None:
            continue
        n = len(src) if split == "train" else (len(src) if len(dst) == len(src) else 0)
        out[split] = {i: files[i] for i in range(min(n, len(dst))) if split == "test" or i not in poisoned}
    return out


def write_caption_csv(root: Path, ds: CaptionDataset, split: str, final_root: Path, separator: str = "\t",
                      paths: str = "absolute", copies: Optional[dict[int, str]] = None) -> None:
    """``root/split.csv`` + ``root/images/split/NNNNNN.EXT``; ``filepath`` is absolute under ``final_root`` (where
    the export is published) or relative to the CSV; rows in ``copies`` are their source files byte for byte."""
    (root / "images" / split).mkdir(parents=True)
    width = index_digits(len(ds))
    buf = io.StringIO()
    w = csv.writer(buf, delimiter=separator, lineterminator="\n")
    w.writerow(["filepath", "title", "label"])
    for i in range(len(ds)):
        data, ext = image_file(ds, i, copies)
        rel = f"images/{split}/{i:0{width}d}.{ext}"
        (root / rel).write_bytes(data)
        shown = str(final_root.resolve() / rel) if paths == "absolute" else rel
        for c in ds.captions[i]:
            w.writerow([shown, c, _label_name(ds, i)])
    (root / f"{split}.csv").write_text(buf.getvalue(), encoding="utf-8")


def write_split(root: Path, splits: Any, ds: Any, split: str, fmt: str, final_root: Path,
                csv_separator: str = "\t", csv_paths: str = "absolute", copies: Optional[dict[int, str]] = None) -> None:
    """One split (``train``, ``test``, ``test_triggered``) of ``splits`` in format ``fmt``; caption formats copy
    the rows in ``copies`` from their source files (:func:`untouched_files`)."""
    if fmt == "imagefolder":
        write_imagefolder_split(root, ds, split)
    elif fmt == "csv":
        write_caption_csv(root, ds, split, final_root, csv_separator, csv_paths, copies)
    elif fmt == "wds":
        write_caption_shards(root, ds, split, copies=copies)
    elif split == "train":
        write_npz(root, splits)
    else:  # npz: a triggered test set goes beside data.npz as test_triggered.npz (x_test, y_test, class_names)
        write_npz(root, SimpleNamespace(test=ds, class_names=splits.class_names), f"{split}.npz", with_train=False)


def triggered_test(splits: Any, manifest: dict) -> Optional[Any]:
    """The test split with the manifest's trigger applied (seed: the attack's ``eval_seed``, else 0); None when
    the attack has no trigger or the trigger does not fit the test images (e.g. CorruptEncoder's default 40-px
    patch on 32-px images — the attack's own evaluation cannot place it either)."""
    trigger = load_trigger(manifest)
    if trigger is None:
        return None
    test = splits.test
    try:
        trigger.check_fits(*test.images.shape[2:])
    except ClpoisonError:
        return None
    seed = int((manifest.get("params") or {}).get("eval_seed", 0))
    images = trigger.apply(test.images, seed, getattr(test, "sizes", None))
    return replace(test, images=images, name=f"{test.name}-triggered")
