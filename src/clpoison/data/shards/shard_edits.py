"""Poisons and subsets of a **streamed** training split (:class:`~clpoison.data.shards.shard_set.StreamingCaptionSet`):
the streamed side of :class:`~clpoison.data.captions.pair_source.PairEdit` and of ``untouched_subset``.

A streamed split is never held in memory, so an attack cannot edit it: :class:`ShardEdit` writes the poisoned pairs
as **extra webdataset shards** in the run folder, ``RUN/poison_shards/poison-000000.tar`` (``NNNNNN.png`` +
``NNNNNN.txt``, 10,000 samples a shard; written in a temporary folder, synced and renamed into place). The clean
shards are only read. The split becomes clean shards + poison shards: one shard list, counted, split over processes
and loader workers and read by the tokenizer together.

* ``replace(rows, ...)``: only the shards holding the chosen ordinals are read (located from the tar headers) and
  those samples decoded; the edited copies are **added** (the clean originals stay in their shards; in memory they
  are replaced) and the manifest's ``stream.sources`` names each one's (row, ordinal, shard, key).
* ``add(...)``: the pairs are written at their own size; the stream resizes them like every other sample.
* Rows: the clean samples ``0..N-1`` in shard order, the poison samples ``N..`` in poison-shard order.
* ``poison.json`` beside the shards records what was asked (``request``: attack, params, seed, clean-data
  fingerprint) with the manifest: :meth:`ShardEdit.reused` hands back poison shards whose sha256 still match and
  nothing is drawn again.

:func:`clean_shard_subset` (CleanCLIP's clean fine-tuning split): the clean shards (this run's own poison shards left
out; a shard of ``avoid`` — a poisoned run's poison shards — refused with one line) in an order seeded like the
in-memory rule, whole shards kept until they hold ``count`` samples (tar headers), of which the **first** ``count``
are streamed (the last shard read only up to the count; nothing is loaded whole).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from ...errors import ConfigError, DataError
from ...utils.io import atomic_write_json, sha256_file
from ..captions.caption_dataset import CaptionDataset
from ..captions.caption_shards import iter_shard_samples, write_caption_shards
from ..captions.pair_source import ImageEdit, PoisonRecord
from ..image_readers import decode_image
from .shard_stream import shard_counts

POISON_DIR = "poison_shards"
RECORD = "poison.json"
SHARD_SIZE = 10000


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


class ShardEdit:
    """Poisons of a streamed split, written as extra shards in ``run_dir/poison_shards`` (see the module doc)."""

    def __init__(self, train: Any, run_dir: Optional[Path], echo: Callable[[str], None] = lambda s: None) -> None:
        if run_dir is None:
            raise ConfigError("streamed shards are poisoned inside a run (clpoison run writes RUN/poison_shards); to "
                              "export a poisoned set instead, read the pairs into memory (data.captions.stream=false)")
        self.train, self.folder, self.echo = train, Path(run_dir) / POISON_DIR, echo
        self.request: Optional[dict] = None
        self.written = 0

    def extended(self, stream: dict, captions: Optional[list[list[str]]] = None) -> tuple[Any, dict]:
        """The split with the poison shards of a manifest's ``stream`` section, and the splits' extra source entry."""
        shards = stream["poison_shards"]
        train = self.train.with_shards([self.folder / s["file"] for s in shards], [s["sha256"] for s in shards],
                                       sum(int(s["samples"]) for s in shards), captions)
        return train, {"poison_shards": [s["file"] for s in shards]}

    def reused(self, request: Callable[[], dict]) -> Optional[tuple[Any, dict, dict]]:
        self.request = request()
        man = reusable(self.folder, self.request)
        if man is None:
            return None
        self.echo(f"attack: reusing the {len(man.get('added_indices') or [])} poison samples in {self.folder} "
                  "(sha256 checked)")
        return (*self.extended(man["stream"]), man)

    def replace(self, rows: torch.Tensor, captions: list[list[str]], edit: ImageEdit,
                name: str) -> tuple[Any, PoisonRecord]:
        ordinals = rows.tolist()
        picked = read_samples(self.train, ordinals)
        images = torch.stack([img for _, _, img in picked]) if picked else torch.empty(0, 3, 1, 1, dtype=torch.uint8)
        if len(ordinals):
            images = edit(images, None)
        n0 = len(self.train)
        sources = [{"row": n0 + j, "ordinal": o, "shard": s, "key": k} for j, (o, (s, k, _)) in enumerate(zip(ordinals, picked))]
        return self._write(images, captions, None, {"sources": sources}, {"source_ordinals": ordinals})

    def add(self, images: Sequence[torch.Tensor] | torch.Tensor, captions: list[list[str]], labels: Sequence[int],
            sizes: Optional[torch.Tensor], name: str) -> tuple[Any, PoisonRecord]:
        return self._write(images, captions, sizes, {}, {})

    def _write(self, images: Any, captions: list[list[str]], sizes: Optional[torch.Tensor], extra: dict,
               details: dict) -> tuple[Any, PoisonRecord]:
        train, n0 = self.train, len(self.train)
        if captions:
            shards = write_poison_shards(self.folder, images if torch.is_tensor(images) else torch.stack(list(images)),
                                         captions, sizes)
        else:  # the clean control (no poison): no shard, and none left over from an earlier attempt
            shards = []
            for old in [self.folder / RECORD, *self.folder.glob("poison-*.tar")]:
                old.unlink(missing_ok=True)
        stream = {"clean_shards": [p.name for p in train.shards], "clean_samples": n0, "folder": POISON_DIR,
                  "poison_shards": shards, **extra}
        out, source = self.extended(stream, captions)
        self.written = len(captions)
        return out, PoisonRecord(added=range(n0, n0 + len(captions)), details=details, stream=stream, source=source)

    def commit(self, manifest: dict) -> None:
        atomic_write_json(self.folder / RECORD, {"request": self.request, "manifest": manifest})
        k = len(manifest.get("stream", {}).get("poison_shards") or [])
        self.echo(f"attack: wrote {self.written} poison samples as {k} extra shard(s) in {self.folder}; the clean "
                  f"shards are untouched")


def clean_shard_subset(train: Any, count: int, seed: int, name: str, avoid: Sequence[Path] = (), world: int = 1,
                       key: str = "count") -> tuple[Any, dict]:
    """The first ``count`` samples of a seeded choice of whole clean shards, and the record of the choice (see the
    module doc)."""
    clean = [p for p in train.shards if str(p) not in train.added]
    inside = {p.resolve() for p in clean}
    bad = [p for p in avoid if p.resolve() in inside]
    if bad:
        raise ConfigError(f"data.path lists '{bad[0]}', a poison shard of the poisoned run; "
                          f"{key} takes clean shards only: point data.path at the clean shards alone")
    order = np.random.default_rng(int(seed) * 7_919 + 12_345).permutation(len(clean))
    known = dict(zip(map(str, train.shards), train.counts or []))  # counted from the tar headers when loaded
    chosen, counts = [], []
    for i in order:
        chosen.append(clean[int(i)])
        counts.append(known[str(chosen[-1])] if str(chosen[-1]) in known else shard_counts(chosen[-1:])[0])
        if sum(counts) >= count:
            break
    if sum(counts) < count:
        raise ConfigError(f"{key}={count} exceeds the {sum(counts)} samples of the {len(clean)} clean shards; lower it")
    if len(chosen) < world:
        raise ConfigError(f"the {count} samples of {key} fill {len(chosen)} shard(s), fewer than the {world} "
                          f"processes; raise {key} or write smaller shards")
    subset = train.first_samples(chosen, count, name, counts)
    return subset, {"split": "clean-shards", "shards": [p.name for p in chosen], "poisons_in_split": 0}
