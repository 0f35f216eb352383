"""Verifying a poisoned-dataset export (``clpoison verify DIR``, and ``clpoison run`` on data that comes with a
manifest) against what the export recorded.

An export (:func:`clpoison.poisoned.export.export_poisoned`) writes ``SHA256SUMS`` — the sha256 of every file in the
folder (``sha256  relative/path`` lines, ``sha256sum -c`` compatible). :func:`verify_export` checks, each failure one
:class:`~clpoison.errors.DataError` line naming the file:

1. every file listed in ``SHA256SUMS`` exists with that hash, and no unlisted file was added;
2. the manifest's schema, and its indices: ``poisoned_indices`` inside the clean training split, ``added_indices``
   after it, sizes consistent with ``source`` / ``output``;
3. the trigger: the recorded patch tensor matches its sha256, and ``trigger.png`` decodes to exactly that patch;
4. the decoded poisoned training split matches the manifest's output fingerprint (given the loaded ``splits``).

Class order does not matter for (4): a reader that orders class names differently (CSV readers sort them) is
mapped back to the manifest's class order before fingerprinting, so no false alarm is raised.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Optional

import torch

from ..errors import DataError
from ..utils.io import atomic_write_text, sha256_file
from .manifest import fingerprint, in_class_order, load_trigger, read_manifest

SUMS_NAME = "SHA256SUMS"


def write_sums(root: str | os.PathLike) -> None:
    """Write ``root/SHA256SUMS`` over every other file under ``root`` (sorted relative paths)."""
    root = Path(root)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != SUMS_NAME)
    atomic_write_text(root / SUMS_NAME, "".join(f"{sha256_file(p)}  {p.relative_to(root).as_posix()}\n" for p in files))


def check_sums(root: Path) -> int:
    """Check ``root/SHA256SUMS``; the number of files verified."""
    sums = root / SUMS_NAME
    if not sums.is_file():
        raise DataError(f"'{root}' has no {SUMS_NAME}; re-export it with `clpoison poison`")
    listed: dict[str, str] = {}
    for n, line in enumerate(sums.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        digest, sep, rel = line.partition("  ")
        if not sep or len(digest) != 64 or rel.startswith("/") or ".." in Path(rel).parts:
            raise DataError(f"'{sums}' line {n} is malformed; re-export the dataset")
        listed[rel] = digest
    for rel, digest in listed.items():
        p = root / rel
        if not p.is_file():
            raise DataError(f"'{p}' is listed in {SUMS_NAME} but missing; the export is incomplete")
        if sha256_file(p) != digest:
            raise DataError(f"'{p}' does not match its sha256 in {SUMS_NAME}; it was modified after export")
    extra = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.name != SUMS_NAME
                   and p.relative_to(root).as_posix() not in listed)
    if extra:
        raise DataError(f"'{root / extra[0]}' is not part of the export ({SUMS_NAME}); it was added after export")
    return len(listed)


def check_csv_paths(root: Path) -> int:
    """Every ``filepath`` of the export's CSV files (``train.csv``, ``test.csv``, ``test_triggered.csv``) names a
    file inside ``root``; a path into another folder (a copied or moved export with absolute paths, a hand-edited
    row) is one DataError line naming the CSV and the row. Returns the rows checked."""
    import csv

    base, rows = root.resolve(), 0
    for f in sorted(root.glob("*.csv")):
        lines = f.read_text(encoding="utf-8", errors="replace").splitlines()
        if not lines or not lines[0].startswith("filepath") or len(lines[0]) <= len("filepath"):
            continue
        for n, row in enumerate(csv.reader(lines[1:], delimiter=lines[0][len("filepath")]), 2):
            if not row:
                continue
            target = Path(row[0]) if Path(row[0]).is_absolute() else f.parent / row[0]
            if base not in Path(os.path.realpath(target)).parents:
                raise DataError(f"'{f}' line {n} points outside the export ('{row[0]}'); the export was copied or "
                                "moved with absolute paths, or edited — re-export it (--csv-paths relative moves)")
            rows += 1
    return rows


def _check_indices(manifest: dict, where: str) -> None:
    try:
        n_src, n_out = int(manifest["source"]["train_size"]), int(manifest["output"]["train_size"])
        poisoned = [int(i) for i in manifest.get("poisoned_indices") or []]
        added = [int(i) for i in manifest.get("added_indices") or []]
    except (KeyError, TypeError, ValueError):
        raise DataError(f"manifest '{where}' lacks source/output sizes or has non-integer indices; re-export it") from None
    if any(not 0 <= i < n_src for i in poisoned):
        raise DataError(f"manifest '{where}': poisoned_indices outside the {n_src} clean training rows")
    if any(not n_src <= i < n_out for i in added) or n_out != n_src + len(added):
        raise DataError(f"manifest '{where}': added_indices / sizes are inconsistent ({n_src} clean + {len(added)} "
                        f"added != {n_out})")


def _check_trigger(manifest: dict, root: Path) -> bool:
    trigger = load_trigger(manifest)  # verifies the tensor against its sha256
    if trigger is None:
        return False
    png = root / "trigger.png"
    if png.exists():
        from ..triggers import read_png

        if hashlib.sha256(png.read_bytes()).hexdigest() != manifest["trigger"].get("png_sha256") or \
                not torch.equal(read_png(png), trigger.patch):
            raise DataError(f"'{png}' does not match the trigger recorded in the manifest")
    return True


def verify_output(manifest: dict, train: Any, where: str) -> None:
    """Raise one line unless the loaded poisoned training split matches the manifest's output fingerprint."""
    names = list(manifest.get("source", {}).get("class_names") or [])
    if fingerprint(in_class_order(train, names)) != manifest["output"]["fingerprint"]["train"]:
        raise DataError(f"the training data in '{where}' does not match its manifest's output fingerprint; "
                        "it was modified after export")


def verify_test_splits(manifest: dict, splits: Any, root: Path) -> list[str]:
    """The test splits of an NPZ export checked too: ``x_test`` against the clean test split's fingerprint (an
    attack never changes it) and ``test_triggered.npz`` against the manifest's trigger applied to that test split.
    Returns the splits checked; one DataError line naming the file on a mismatch."""
    from ..data.datasets import ImageDataset
    from .export_formats import triggered_test

    names = list(manifest["source"].get("class_names") or [])
    test = getattr(splits, "test", None)
    want = manifest["source"]["fingerprint"].get("test")
    if test is None or want is None or not isinstance(test, ImageDataset):
        return []
    if fingerprint(in_class_order(test, names)) != want:
        raise DataError(f"the test split in '{root / 'data.npz'}' does not match its manifest's source fingerprint; "
                        "it was modified after export")
    checked = ["test"]
    path = root / "test_triggered.npz"
    expected = triggered_test(splits, manifest)
    if path.is_file() or expected is not None:
        import numpy as np

        try:
            with np.load(path, allow_pickle=False) as z:
                got = torch.from_numpy(z["x_test"]).permute(0, 3, 1, 2) if z["x_test"].shape[-1] == 3 else \
                    torch.from_numpy(z["x_test"])
        except (OSError, KeyError, ValueError) as e:
            raise DataError(f"'{path}' cannot be read ({type(e).__name__}); re-export the dataset") from None
        if expected is None or not torch.equal(got, expected.images):
            raise DataError(f"'{path}' is not the manifest's trigger applied to the test split; it was modified "
                            "after export")
        checked.append("test_triggered")
    return checked


def verify_export(root: str | os.PathLike, splits: Optional[Any] = None, require_sums: bool = True) -> dict[str, Any]:
    """Check an export folder (see the module doc); returns a summary dict, or raises one :class:`DataError` line.
    ``require_sums=False`` accepts an export made before ``SHA256SUMS`` existed (its file check is skipped)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"'{root}' is not a folder; pass the folder `clpoison poison` wrote")
    if not (root / "manifest.json").is_file():
        raise DataError(f"'{root}' has no manifest.json; pass the folder `clpoison poison` wrote")
    n_files = check_sums(root) if require_sums or (root / SUMS_NAME).exists() else 0
    check_csv_paths(root)
    manifest = read_manifest(root / "manifest.json")
    _check_indices(manifest, str(root / "manifest.json"))
    has_trigger = _check_trigger(manifest, root)
    checked: list[str] = []
    if splits is not None:
        verify_output(manifest, splits.train, str(root))
        checked = ["train", *verify_test_splits(manifest, splits, root)]
    return {"folder": str(root), "files": n_files, "attack": manifest.get("attack", {}).get("name"),
            "poisoned": len(manifest.get("poisoned_indices") or []), "added": len(manifest.get("added_indices") or []),
            "trigger": has_trigger, "data": splits is not None, "splits_checked": checked}
