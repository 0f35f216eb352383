"""The poisoned-dataset manifest: what an attack did, reproducibly and verifiably (shared by every attack).

A manifest is a JSON object (schema ``clpoison.poison-manifest``, version :data:`SCHEMA_VERSION`) with

* ``attack`` (name, version), ``params`` (every parameter, defaults included), ``seed``;
* ``source`` — sha256 fingerprints of the clean train and test splits (images, captions/labels, class names);
* ``poisoned_indices`` (training rows that were modified in place) and ``added_indices`` (rows appended);
* ``targets`` — target label(s) and, for targeted poisoning, the victims;
* ``trigger`` — the spec, the exact patch tensor (base64 of its raw uint8 bytes), its sha256 and the sha256 of
  its PNG encoding (exported next to the manifest as ``trigger.png`` by ``clpoison poison``);
* ``output`` — the fingerprint of the poisoned training split;
* ``stream`` (streamed tar shards only) — the clean shards, the poison shards written beside them (file, sha256,
  samples) and, for a backdoor, the (shard, key) of each source sample (:mod:`clpoison.data.shards.shard_edits`).

No timestamps or host names: the same attack, parameters, seed and input give a byte-identical file (keys sorted,
see :func:`manifest_json`). Example::

    >>> import torch
    >>> from clpoison.data.datasets import ImageDataset
    >>> ds = ImageDataset(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.tensor([0, 1]), ["a", "b"])
    >>> fingerprint(ds) == fingerprint(ds.subset([0, 1]))
    True
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional, Sequence

import numpy as np
import torch

from ..data.split_info import tensor_fingerprint
from ..errors import DataError
from ..utils.io import atomic_write_text, dumps_json
from ..triggers import trigger_from_dict

SCHEMA = "clpoison.poison-manifest"
SCHEMA_VERSION = 1


def fingerprint(ds: Any) -> str:
    """sha256 of a split: its own :meth:`content_fingerprint` (:mod:`clpoison.data.split_info`: image bytes and
    shape, labels, captions, class names and valid sizes; tar shards: the shard list), or that of the tensors of a
    stand-in with ``images`` (and ``labels``, ``captions``, ...)."""
    if hasattr(type(ds), "content_fingerprint"):
        return ds.content_fingerprint()
    return tensor_fingerprint(ds)


def fingerprint_splits(splits: Any) -> dict[str, str]:
    return {"train": fingerprint(splits.train), "test": fingerprint(splits.test)}


def trigger_entry(trigger: Any) -> dict:
    """A trigger's manifest entry (patch or CTRL: anything with ``to_dict`` and ``png``)."""
    return {**trigger.to_dict(), "png": "trigger.png", "png_sha256": hashlib.sha256(trigger.png()).hexdigest()}


def build_manifest(
    *,
    attack: str,
    attack_version: str,
    params: dict,
    seed: int,
    source: Any,
    output: Any,
    poisoned_indices: Sequence[int] = (),
    added_indices: Sequence[int] = (),
    targets: Optional[dict] = None,
    trigger: Optional[Any] = None,
    details: Optional[dict] = None,
    stream: Optional[dict] = None,
) -> dict:
    """The manifest of one poisoning (``source``/``output`` are the clean and poisoned splits); ``stream`` (streamed
    shards only: :mod:`clpoison.data.shards.shard_edits`) names the clean and the written poison shards."""
    extra = {} if stream is None else {"stream": stream}
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "attack": {"name": attack, "version": attack_version},
        "params": params,
        "seed": int(seed),
        "source": {"fingerprint": fingerprint_splits(source), "train_size": len(source.train),
                   "test_size": len(source.test), "class_names": list(source.train.class_names or source.test.class_names)},
        "poisoned_indices": sorted(int(i) for i in poisoned_indices),
        "added_indices": sorted(int(i) for i in added_indices),
        "targets": targets or {},
        "trigger": None if trigger is None else trigger_entry(trigger),
        "details": details or {},
        "output": {"fingerprint": {"train": fingerprint(output.train)}, "train_size": len(output.train)},
        **extra,
    }


def manifest_json(manifest: dict) -> str:
    """Canonical text: sorted keys, 2-space indent, trailing newline (byte-identical for identical content)."""
    return dumps_json(manifest)


def manifest_sha256(manifest: dict) -> str:
    return hashlib.sha256(manifest_json(manifest).encode("utf-8")).hexdigest()


def write_manifest(path: str | Path, manifest: dict) -> None:
    atomic_write_text(path, manifest_json(manifest))


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _unique_keys(pairs: list) -> dict:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate key '{next(k for k in keys if keys.count(k) > 1)}'")
    return dict(pairs)


def read_manifest(path: str | Path) -> dict:
    """The manifest at ``path``, validated whole (:func:`check_manifest`); one DataError line naming the file and
    what is wrong with it (not JSON, ``Infinity``, a duplicate key, a missing or mistyped entry, a bad trigger)."""
    p = Path(path)
    try:
        m = json.loads(p.read_text(encoding="utf-8"), parse_constant=_no_constant, object_pairs_hook=_unique_keys)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        detail = type(e).__name__ if isinstance(e, (OSError, UnicodeDecodeError, json.JSONDecodeError)) else str(e)
        raise DataError(f"manifest '{p}' cannot be read ({detail}); re-export the poisoned dataset") from None
    if not isinstance(m, dict) or m.get("schema") != SCHEMA:
        raise DataError(f"'{p}' is not a clpoison poison manifest (schema '{SCHEMA}' expected)")
    if m.get("schema_version") != SCHEMA_VERSION:
        raise DataError(f"manifest '{p}' has schema version {m.get('schema_version')}; this clpoison reads "
                        f"version {SCHEMA_VERSION}; re-export it with this version")
    check_manifest(m, str(p))
    return m


def _ints(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in v)


def check_manifest(m: dict, where: str) -> None:
    """Every entry a reader relies on, checked before use: one DataError line naming the key in manifest ``where``."""
    def bad(key: str, what: str) -> None:
        raise DataError(f"manifest '{where}': {key} {what}; re-export the poisoned dataset")

    for key, kind in (("attack", dict), ("source", dict), ("output", dict), ("params", dict)):
        if not isinstance(m.get(key), kind):
            bad(key, "is missing or not an object")
    src, out = m["source"], m["output"]
    for key, d in (("source.train_size", src.get("train_size")), ("source.test_size", src.get("test_size")),
                   ("output.train_size", out.get("train_size"))):
        if not isinstance(d, int) or isinstance(d, bool) or d < 0:
            bad(key, "is missing or not a non-negative integer")
    names = src.get("class_names", [])
    if not isinstance(names, list) or not all(isinstance(c, str) for c in names):
        bad("source.class_names", "is not a list of names")
    fps = (src.get("fingerprint"), out.get("fingerprint"))
    if not all(isinstance(f, dict) and all(isinstance(v, str) for v in f.values()) for f in fps) \
            or "train" not in fps[1]:
        bad("source/output.fingerprint", "is missing or not a mapping of split to sha256")
    for key in ("poisoned_indices", "added_indices"):
        v = m.get(key, [])
        if not _ints(v):
            bad(key, "is not a list of integers (no floats, booleans or Infinity)")
        if len(set(v)) != len(v):
            bad(key, "holds duplicates")
    n_src, n_out = src["train_size"], out["train_size"]
    poisoned, added = m.get("poisoned_indices", []), m.get("added_indices", [])
    if any(not 0 <= i < n_src for i in poisoned):
        bad("poisoned_indices", f"reach outside the {n_src} clean training rows")
    if any(not n_src <= i < n_out for i in added) or n_out != n_src + len(added):
        bad("added_indices", f"and the sizes are inconsistent ({n_src} clean + {len(added)} added != {n_out})")
    targets = m.get("targets", {})
    if not isinstance(targets, dict):
        bad("targets", "is not an object")
    if names and "target" in targets and targets["target"] is not None and targets["target"] not in names:
        bad("targets.target", f"'{targets['target']}' is not one of the source classes")
    ti = targets.get("target_index")
    if names and ti is not None and (not isinstance(ti, int) or isinstance(ti, bool) or not 0 <= ti < len(names)
                                     or "target" in targets and names[ti] != targets["target"]):
        bad("targets.target_index", f"{ti!r} does not name the target among the {len(names)} classes")
    if m.get("trigger") is not None:
        load_trigger(m, where)


def load_trigger(manifest: dict, where: str = "manifest") -> Optional[Any]:
    """The exact trigger recorded in a manifest (verified against its sha256), or None; one DataError line for a
    trigger entry that is not an object, lacks a key, has bad base64 or a patch of the wrong shape."""
    t = manifest.get("trigger")
    if t is None:
        return None
    if not isinstance(t, dict):
        raise DataError(f"manifest '{where}': trigger is not an object ({type(t).__name__}); re-export the dataset")
    try:
        trigger = trigger_from_dict(t)
        patch = getattr(trigger, "patch", None)
        if patch is not None and (patch.dim() != 3 or patch.shape[0] != 3):
            raise ValueError(f"the patch has shape {list(patch.shape)}, not (3, h, w)")
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as e:  # DataError (sha256) included
        detail = f"missing key {e}" if isinstance(e, KeyError) else str(e).splitlines()[0][:160]
        raise DataError(f"manifest '{where}': its trigger cannot be rebuilt ({detail}); re-export the dataset") from None
    return trigger


def in_class_order(ds: Any, names: list[str]) -> Any:
    """``ds`` with labels renumbered to the class order ``names`` (when its class names are a permutation)."""
    own = list(getattr(ds, "class_names", []) or [])
    if own == list(names) or sorted(own) != sorted(names) or getattr(ds, "labels", None) is None:
        return ds
    perm = torch.tensor([list(names).index(c) for c in own] + [-1], dtype=torch.int64)
    labels = torch.as_tensor(ds.labels, dtype=torch.int64)
    view = SimpleNamespace(**{k: getattr(ds, k, None) for k in ("images", "captions", "sizes")})
    view.labels, view.class_names = perm[labels], list(names)  # label -1 (unlabelled) maps to perm[-1] = -1
    return view


def verify(manifest: dict, source: Any = None, output: Any = None) -> None:
    """Raise :class:`DataError` unless ``source`` / ``output`` match the fingerprints recorded in the manifest."""
    names = list(manifest.get("source", {}).get("class_names") or [])
    if source is not None and {k: fingerprint(in_class_order(getattr(source, k), names)) for k in ("train", "test")} \
            != manifest["source"]["fingerprint"]:
        raise DataError("the clean data does not match the manifest's source fingerprint; "
                        "poison the same data the manifest was made from")
    if output is not None and fingerprint(in_class_order(output.train, names)) != manifest["output"]["fingerprint"]["train"]:
        raise DataError("the poisoned training split does not match the manifest's output fingerprint; "
                        "it was modified after export")


def manifest_poisons(manifest: Optional[dict]) -> Optional[Any]:
    """Sorted unique training rows an attack touched (``poisoned_indices`` ∪ ``added_indices``); ``None`` without a
    manifest. What defenses and scans score their detections against."""
    if not manifest:
        return None
    idx = list(manifest.get("poisoned_indices") or []) + list(manifest.get("added_indices") or [])
    return np.unique(np.asarray(idx, dtype=np.int64))
