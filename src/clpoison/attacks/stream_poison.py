"""Poisoning a stream: the Carlini attacks on streamed tar shards (``data.captions.stream: true``).

A streamed training split is never held in memory, so the attacks cannot edit it. Instead
:func:`poison_backdoor_stream` and :func:`poison_targeted_stream` (called by the attacks' ``poison`` when the
training split streams) write their poisoned pairs as **extra webdataset shards** in the run folder,
``RUN/poison_shards/poison-000000.tar`` (``NNNNNN.png`` + ``NNNNNN.txt``, 10,000 samples a shard; written in a
temporary folder, synced and renamed into place). The clean shards are only read, never opened for writing. The
training split becomes clean shards + poison shards: one shard list, counted, split over processes and loader
workers and read by the tokenizer together.

* ``carlini-backdoor``: n = ``poison_count`` (or ``poison_rate`` × streamed samples); the n sample ordinals are
  drawn first with the run seed (the same draw, caption set and trigger placement as in memory:
  :meth:`~clpoison.attacks.carlini_backdoor.CarliniBackdoor.draw`), then only the shards holding them are read.
  Each chosen image gets the attack's trigger and a caption from the target's caption set (the streamed captions,
  one pass without decoding an image, or templates). Unlike in memory the clean original stays in its shard: the
  triggered copy is **added**.
* ``carlini-targeted``: the victims come from the labelled test / attack set held in memory, k pairs each with
  captions from the adversarial class's caption set, as in memory. A victim is written at its own size; the stream
  decodes and resizes it to ``data.image_size`` like every other sample (in memory the sizes must match).

Rows: the clean samples are rows ``0..N-1`` in shard order, the poison samples ``N..`` in poison-shard order; the
manifest (:func:`~clpoison.attacks.manifest.build_manifest`, the in-memory schema) lists them as ``added_indices``
and adds a ``stream`` section: ``clean_shards`` (names), ``clean_samples``, ``folder``, ``poison_shards`` (file,
sha256, samples) and, for the backdoor, ``sources`` (row, shard, key of each source sample). ``poison.json`` in the
folder records what was asked (attack, params, seed, clean-data fingerprint) with the manifest: a resumed run whose
poison shards still have their sha256 reuses them and draws nothing.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch

from ..contexts import PoisonContext
from ..data.caption_shards import iter_shard_samples
from ..data.captions import CaptionDataset, CaptionSplits
from ..data.image_readers import decode_image
from ..data.shard_stream import shard_counts
from ..errors import ConfigError, DataError
from ..utils.io import atomic_write_json, dumps_json, sha256_file
from .base import PoisonResult
from .export_formats import write_caption_shards
from .manifest import build_manifest, fingerprint_splits

POISON_DIR = "poison_shards"
RECORD = "poison.json"
SHARD_SIZE = 10000


def poison_folder(context: Optional[PoisonContext]) -> Path:
    run = None if context is None else context.run_dir
    if run is None:
        raise ConfigError("streamed shards are poisoned inside a run (clpoison run writes RUN/poison_shards); to "
                          "export a poisoned set instead, read the pairs into memory (data.captions.stream=false)")
    return Path(run) / POISON_DIR


def _echo(context: Optional[PoisonContext]) -> Any:
    return (context or PoisonContext()).echo


def _request(attack: Any, seed: int, splits: Any) -> dict:
    return json.loads(dumps_json({"attack": attack.name, "version": attack.version, "params": attack.params.to_dict(),
                                  "seed": int(seed), "source": fingerprint_splits(splits)}))


def reusable(folder: Path, request: dict) -> Optional[dict]:
    """The manifest of poison shards written earlier for exactly ``request``, when every shard still has its
    recorded sha256; else ``None`` (they are written again)."""
    try:
        saved = json.loads((folder / RECORD).read_text(encoding="utf-8"))
        if saved.get("request") != request:
            return None
        man = saved["manifest"]
        for s in man["stream"]["poison_shards"]:
            if sha256_file(folder / s["file"]) != s["sha256"]:
                return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return man


def read_samples(train: Any, ordinals: list[int]) -> list[tuple[str, str, torch.Tensor]]:
    """``(shard name, key, uint8 image)`` of the samples at ``ordinals`` (rows in shard order), decoded at the
    stream's image size; only the shards holding them are read (located from the tar headers)."""
    counts = shard_counts(train.shards)
    starts = [0]
    for c in counts:
        starts.append(starts[-1] + c)
    want: dict[int, dict[int, int]] = {}
    shard = 0
    for o in sorted(ordinals):
        while o >= starts[shard + 1]:
            shard += 1
        want.setdefault(shard, {})[o - starts[shard]] = o
    got: dict[int, tuple[str, str, torch.Tensor]] = {}
    for si, local in want.items():
        path = train.shards[si]
        last = max(local)
        for j, s in enumerate(iter_shard_samples([path], train.on_error)):
            if j in local:
                got[local[j]] = (path.name, s["key"], decode_image(io.BytesIO(s["image"]), train.image_size))
            if j >= last:
                break
    missing = [o for o in ordinals if o not in got]
    if missing:
        raise DataError(f"streamed samples {missing[:5]} could not be read for poisoning (skipped as bad rows?); fix "
                        "the shards or set data.captions.on_error=fail to see why")
    return [got[o] for o in ordinals]


def write_poison_shards(folder: Path, images: torch.Tensor, captions: list[list[str]],
                        sizes: Optional[torch.Tensor] = None) -> list[dict]:
    """``folder/poison-NNNNNN.tar``: written in a temporary folder beside it, synced, then renamed into place
    (earlier poison shards and the record are removed first). Returns ``[{"file", "sha256", "samples"}]``."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        write_caption_shards(tmp, CaptionDataset(images, captions, name="poison", sizes=sizes), "poison", SHARD_SIZE)
        folder.mkdir(exist_ok=True)
        (folder / RECORD).unlink(missing_ok=True)  # no stale claim survives a crash below
        for old in folder.glob("poison-*.tar"):
            old.unlink()
        out = []
        for f in sorted(tmp.glob("poison-*.tar")):
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
            out.append({"file": f.name, "sha256": sha256_file(f), "samples": shard_counts([f])[0]})
            os.replace(f, folder / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _finish(attack: Any, splits: Any, seed: int, folder: Path, request: dict, images: list[torch.Tensor] | torch.Tensor,
            captions: list[list[str]], sizes: Optional[torch.Tensor], manifest_args: dict,
            sources: Optional[list[dict]] = None, echo: Any = lambda s: None) -> PoisonResult:
    """Write the poison shards, extend the streamed split with them, build and record the manifest."""
    train, n0 = splits.train, len(splits.train)
    if captions:
        shards = write_poison_shards(folder, images if torch.is_tensor(images) else torch.stack(images), captions, sizes)
    else:  # the clean control (no poison): no shard, and none left over from an earlier attempt
        shards = []
        for old in [folder / RECORD, *folder.glob("poison-*.tar")]:
            old.unlink(missing_ok=True)
    stream = {"clean_shards": [p.name for p in train.shards], "clean_samples": n0, "folder": POISON_DIR,
              "poison_shards": shards, **({"sources": sources} if sources is not None else {})}
    result = _result(splits, folder, stream, captions)
    manifest = build_manifest(attack=attack.name, attack_version=attack.version, params=attack.params.to_dict(),
                              seed=seed, source=splits, output=result.splits, added_indices=range(n0, n0 + len(captions)),
                              stream=stream, **manifest_args)
    atomic_write_json(folder / RECORD, {"request": request, "manifest": manifest})
    result.manifest = manifest
    echo(f"attack: wrote {len(captions)} poison samples as {len(shards)} extra shard(s) in {folder}; the clean "
         f"shards are untouched")
    return result


def _result(splits: Any, folder: Path, stream: dict, captions: Optional[list[list[str]]] = None) -> PoisonResult:
    shards = stream["poison_shards"]
    train = splits.train.with_shards([folder / s["file"] for s in shards], [s["sha256"] for s in shards],
                                     sum(int(s["samples"]) for s in shards), captions)
    return PoisonResult(CaptionSplits(train, splits.test, {**splits.source, "poison_shards": [s["file"] for s in shards]}))


def _reused(attack: Any, splits: Any, folder: Path, request: dict, context: Optional[PoisonContext]) -> Optional[PoisonResult]:
    man = reusable(folder, request)
    if man is None:
        return None
    attack.restore(man)
    n = len(man.get("added_indices") or [])
    _echo(context)(f"attack: reusing the {n} poison samples in {folder} (sha256 checked)")
    result = _result(splits, folder, man["stream"])
    result.manifest = man
    return result


def poison_backdoor_stream(attack: Any, splits: Any, seed: int, context: Optional[PoisonContext] = None) -> PoisonResult:
    """The Carlini backdoor on a streamed split: n triggered copies of seeded source samples, captioned from the
    target's caption set, written as poison shards."""
    folder, train = poison_folder(context), splits.train
    request = _request(attack, seed, splits)
    reused = _reused(attack, splits, folder, request, context)
    if reused is not None:
        return reused
    d = attack.draw(splits.class_names, len(train), lambda: train.captions, seed)
    attack.trigger.check_fits(train.image_size, train.image_size)
    rows = d.idx.tolist()
    picked = read_samples(train, rows)
    images = torch.stack([img for _, _, img in picked]) if picked else torch.empty(0, 3, 1, 1, dtype=torch.uint8)
    if d.n:
        images = attack.trigger.apply(images, d.g, None)
    n0 = len(train)
    sources = [{"row": n0 + j, "ordinal": o, "shard": s, "key": k} for j, (o, (s, k, _)) in enumerate(zip(rows, picked))]
    return _finish(attack, splits, seed, folder, request, images, [[c] for c in d.captions], None, {
        "trigger": attack.trigger, "targets": {"target": d.tname, "target_index": d.target},
        "details": {"poison_count": d.n, "caption_set_size": len(d.pool), "candidates": d.candidates,
                    "captions": d.captions, "source_ordinals": rows}}, sources, _echo(context))


def poison_targeted_stream(attack: Any, splits: Any, seed: int, context: Optional[PoisonContext] = None) -> PoisonResult:
    """Carlini targeted poisoning on a streamed split: k (victim test image, adversarial caption) pairs per target,
    the victims from the labelled test / attack set in memory, written as poison shards."""
    folder, train, test = poison_folder(context), splits.train, splits.test
    request = _request(attack, seed, splits)
    reused = _reused(attack, splits, folder, request, context)
    if reused is not None:
        return reused
    n0, k = len(train), attack.params.pairs_per_target
    imgs, caps, _, targets, victims = attack.victim_pairs(splits, n0, lambda: train.captions, seed)
    sizes = None if test.sizes is None else test.sizes[victims].repeat_interleave(k, 0)
    return _finish(attack, splits, seed, folder, request, imgs, caps, sizes, {
        "targets": {"victims": targets, "victim_split": "test"},
        "details": {"pairs_per_target": k, "num_targets": len(victims)}}, echo=_echo(context))
