"""What a run was trained on, so that resuming an interrupted run only continues the *same* run.

:func:`run_fingerprint` is recorded in ``OUT.partial/fingerprint.json`` and in every checkpoint (``fingerprint``):

* ``data`` — sha256 of the clean train and test splits as loaded (image bytes, labels, captions, class names:
  :func:`clpoison.poisoned.manifest.fingerprint`); a streaming image folder or tar-shard set is fingerprinted by
  its file list (path, size, mtime) instead of its decoded pixels;
* ``poisoned`` — sha256 of the attack's manifest less its ``details`` (which hold timings; the manifest's
  ``output`` fingerprint already pins the poisoned data), ``None`` without an attack;
* ``poison_shards`` — streamed data poisoned as extra shards only (:mod:`clpoison.data.shard_edits`): the
  sha256 of each poison shard as this process reads it.

:func:`config_changes` compares two config snapshots, ignoring the *presentation* keys (:data:`PRESENTATION_KEYS`:
the progress bar) that do not change what is trained — so toggling ``--no-progress`` resumes instead of
retraining, and any other change stops with one line. A key that the schema gained after the old snapshot was
written (``model.init``, ``data.exclude_classes``) is no change while it is null or empty.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Optional

from ..poisoned.manifest import fingerprint, manifest_sha256
from ..utils.io import dumps_json

PRESENTATION_KEYS = ("train.progress",)


def _split_fingerprint(ds: Any) -> str:
    import torch

    if isinstance(getattr(ds, "images", None), torch.Tensor):
        return fingerprint(ds)
    h = hashlib.sha256(f"{type(ds).__name__}:{len(ds)}:{list(getattr(ds, 'class_names', []) or [])}".encode())
    for item in getattr(ds, "items", []) or []:
        path, label = item[0], item[1]
        try:
            st = path.stat()
            h.update(f"{path}:{label}:{st.st_size}:{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{path}:{label}:missing\n".encode())
    return h.hexdigest()


def run_fingerprint(splits: Any, manifest: Optional[dict], trained: Any = None) -> dict[str, Any]:
    """``{"data": {"train", "test"}, "poisoned": sha256 of the manifest or None}`` of one run; with a streamed
    training split that reads an attack's poison shards (``trained``), also ``"poison_shards": {file: sha256}`` as
    this process reads them (a missing or changed shard stops with one line)."""
    fp = {"data": {"train": _split_fingerprint(splits.train), "test": _split_fingerprint(splits.test)},
          "poisoned": None if manifest is None else manifest_sha256({k: v for k, v in manifest.items() if k != "details"})}
    if getattr(trained, "added", None):
        fp["poison_shards"] = trained.check_added()
    return fp


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix.rstrip("."): d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}."))
    return out


def config_changes(old: Optional[dict], new: dict) -> list[str]:
    """Dotted keys whose values differ between two config snapshots (JSON-normalised), presentation keys aside;
    ``["<unreadable>"]`` when ``old`` is missing."""
    if not isinstance(old, dict):
        return ["<unreadable>"]
    a, b = _flatten(json.loads(dumps_json(old))), _flatten(json.loads(dumps_json(new)))
    added_later = {k for k in set(b) - set(a) if b[k] is None or b[k] == []}  # gained since, left null / empty
    return sorted(k for k in set(a) | set(b) if k not in PRESENTATION_KEYS and k not in added_later
                  and a.get(k, "<unset>") != b.get(k, "<unset>"))
