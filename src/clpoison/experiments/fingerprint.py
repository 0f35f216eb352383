"""What a run was trained on, so that resuming an interrupted run only continues the *same* run.

:func:`run_fingerprint` is recorded in ``OUT.partial/fingerprint.json`` and in every checkpoint (``fingerprint``):

* ``data`` — each clean split's ``resume_fingerprint()`` (:mod:`clpoison.data.split_info`): sha256 of what it
  holds in memory (image bytes, labels, captions, class names), or of its file list (path, size, mtime) when it is
  read from files as it trains — nothing is decoded;
* ``poisoned`` — sha256 of the attack's manifest less its ``details`` (which hold timings; the manifest's
  ``output`` fingerprint already pins the poisoned data), ``None`` without an attack;
* ``poison_shards`` — when the trained split reads files an attack wrote (streamed data poisoned as extra
  shards, :mod:`clpoison.data.shards.shard_edits`): the sha256 of each as this process reads it (``poison_files()``).

:func:`config_changes` compares two config snapshots, ignoring the *presentation* keys (:data:`PRESENTATION_KEYS`:
the progress bar) that do not change what is trained — so toggling ``--no-progress`` resumes instead of
retraining, and any other change stops with one line. A key that the schema gained after the old snapshot was
written (``model.init``, ``data.exclude_classes``) is no change while it is null or empty.
"""

from __future__ import annotations

import json
from typing import Any, Optional

from ..poisoned.manifest import manifest_sha256
from ..utils.io import dumps_json

PRESENTATION_KEYS = ("train.progress",)


def run_fingerprint(splits: Any, manifest: Optional[dict], trained: Any = None) -> dict[str, Any]:
    """``{"data": {"train", "test"}, "poisoned": sha256 of the manifest or None}`` of one run; when the training
    split (``trained``) reads an attack's poison files, also ``"poison_shards": {file: sha256}`` as this process
    reads them (a missing or changed file stops with one line)."""
    fp = {"data": {"train": splits.train.resume_fingerprint(), "test": splits.test.resume_fingerprint()},
          "poisoned": None if manifest is None else manifest_sha256({k: v for k, v in manifest.items() if k != "details"})}
    files = {} if trained is None else trained.poison_files()
    if files:
        fp["poison_shards"] = files
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
