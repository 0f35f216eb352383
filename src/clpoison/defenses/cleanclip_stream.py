"""CleanCLIP's clean fine-tuning split on **streamed** caption shards (``data.captions.stream: true``).

A streamed split is never held in memory, so the rows of the in-memory rule (``finetune_split: untouched`` draws
rows the attack did not touch) become whole shards: when a run poisons a stream its poisons are *extra* shards in
the run folder (:mod:`clpoison.attacks.stream_poison`), so the shards of ``data.path`` — the clean shards — are
untouched by construction. :func:`clean_shard_split`

* refuses, with one line, a ``data.path`` that lists a poison shard of the poisoned run (the ``stream`` section of
  the manifest beside ``defense.params.checkpoint``, when there is one);
* takes the clean shards (this run's own poison shards, written again by its attack section, are left out) in an
  order seeded by the run's seed (the in-memory rule's RNG seed), keeps whole shards until they hold
  ``finetune_pairs`` samples (counted from the tar headers) and streams the **first** ``finetune_pairs`` samples of
  them (the last shard is read only up to the count; nothing is loaded whole);
* refuses ``finetune_split: range`` (rows of data held in memory) with one line.

Example: 100K pairs from CC3M's 332 shards of ~10K samples → the first 10 shards of the seeded order, read whole.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..attacks.manifest import manifest_poisons
from ..data.shard_stream import StreamingCaptionSet, shard_counts
from ..errors import ConfigError, DataError


def poisoned_run_shards(checkpoint: Path) -> list[Path]:
    """The poison shards listed by the ``stream`` section of the manifest in the poisoned run's folder (none when
    the run wrote no manifest or poisoned data in memory)."""
    path = checkpoint.parent / "manifest.json"
    if not path.is_file():
        return []
    try:
        stream = json.loads(path.read_text(encoding="utf-8")).get("stream") or {}
        folder = checkpoint.parent / stream.get("folder", "poison_shards")
        return [folder / str(f["file"]) for f in stream.get("poison_shards") or []]
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        raise DataError(f"the poisoned run's manifest '{path}' cannot be read; restore it (clpoison run writes it)") from None


def clean_shard_split(train: StreamingCaptionSet, manifest: Optional[dict], params: Any, seed: int,
                      checkpoint: Path, world: int = 1) -> tuple[StreamingCaptionSet, dict[str, Any]]:
    """The fine-tuning split (``finetune_pairs`` samples of a seeded choice of whole clean shards) and its record."""
    if params.finetune_split != "untouched":
        raise ConfigError(f"defense.params.finetune_split={params.finetune_split} names rows of data held in memory; "
                          "with data.captions.stream=true CleanCLIP fine-tunes on whole clean shards: use "
                          "finetune_split=untouched (or data.captions.stream=false)")
    clean = [p for p in train.shards if str(p) not in train.added]
    inside = {p.resolve() for p in clean}
    bad = [p for p in poisoned_run_shards(checkpoint) if p.resolve() in inside]
    if bad:
        raise ConfigError(f"data.path lists '{bad[0]}', a poison shard of the poisoned run {checkpoint.parent}; "
                          "CleanCLIP fine-tunes on clean shards only: point data.path at the clean shards alone")
    want = int(params.finetune_pairs)
    order = np.random.default_rng(int(seed) * 7_919 + 12_345).permutation(len(clean))
    known = dict(zip(map(str, train.shards), train.counts or []))  # counted from the tar headers when loaded
    chosen, counts = [], []
    for i in order:
        chosen.append(clean[int(i)])
        counts.append(known[str(chosen[-1])] if str(chosen[-1]) in known else shard_counts(chosen[-1:])[0])
        if sum(counts) >= want:
            break
    if sum(counts) < want:
        raise ConfigError(f"defense.params.finetune_pairs={want} exceeds the {sum(counts)} samples of the {len(clean)} "
                          "clean shards; lower it")
    if len(chosen) < world:
        raise ConfigError(f"CleanCLIP's {want} fine-tuning pairs fill {len(chosen)} shard(s), fewer than the {world} "
                          "processes; raise defense.params.finetune_pairs or write smaller shards")
    subset = train.first_samples(chosen, want, f"{train.name}/cleanclip", counts)
    poisons = manifest_poisons(manifest)
    return subset, {"cleanclip_finetune_pairs": want, "cleanclip_split": "clean-shards",
                    "cleanclip_finetune_shards": [p.name for p in chosen],
                    "cleanclip_poisoned_rows": 0 if poisons is None else int(len(poisons)),
                    "cleanclip_poisons_in_split": 0}
