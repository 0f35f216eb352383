"""What the CLIP attacks share to poison a training split through the pair-source protocol
(:class:`~clpoison.data.captions.pair_source.PairSource`), whether it is held in memory or streamed from tar shards: an
attack draws its poisons, hands them to the split's editor (:meth:`PairSource.editor`: rows replaced or appended in
memory, extra shards in the run folder on a stream — :mod:`clpoison.data.shards.shard_edits`) and records the manifest
here. A new CLIP attack written this way runs on both.

Example (in memory; a stream only needs ``PoisonContext(run_dir=RUN)`` as ``context``)::

    >>> import torch
    >>> from clpoison.data.captions import CaptionDataset, CaptionSplits
    >>> tr = CaptionDataset(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), [["a cat"]] * 4)
    >>> splits = CaptionSplits(tr, tr)
    >>> edit = pair_editor(tr, None)
    >>> out, rec = edit.add([torch.ones(3, 8, 8, dtype=torch.uint8)], [["a dog"]], [0], None, "+x")
    >>> len(out), list(rec.added)
    (5, [4])
"""

from __future__ import annotations

import json
from typing import Any, Optional

from ..contexts import PoisonContext
from ..data.captions import CaptionSplits
from ..data.captions.pair_source import PairEdit, PoisonRecord
from ..utils.io import dumps_json
from .base import PoisonResult
from ..poisoned.manifest import build_manifest, fingerprint_splits


def pair_editor(train: Any, context: Optional[PoisonContext]) -> PairEdit:
    """The split's editor: a stream writes its poison shards under ``context.run_dir``, progress to
    ``context.echo``."""
    ctx = context or PoisonContext()
    return train.editor(ctx.run_dir, ctx.echo)


def poison_request(attack: Any, seed: int, splits: Any) -> dict:
    """What was asked (attack, version, params, seed, clean-data fingerprint): poisons written for exactly this are
    reused (streamed: a resumed run draws nothing)."""
    return json.loads(dumps_json({"attack": attack.name, "version": attack.version, "params": attack.params.to_dict(),
                                  "seed": int(seed), "source": fingerprint_splits(splits)}))


def reused_poisons(attack: Any, splits: Any, edit: PairEdit, seed: int) -> Optional[PoisonResult]:
    """The poisons written earlier for this request, when intact (the attack takes back what it decided)."""
    got = edit.reused(lambda: poison_request(attack, seed, splits))
    if got is None:
        return None
    train, source, manifest = got
    attack.restore(manifest)
    return PoisonResult(CaptionSplits(train, splits.test, {**splits.source, **source}), manifest)


def record_poisons(attack: Any, splits: Any, seed: int, edit: PairEdit, train: Any, record: PoisonRecord,
                   details: dict, **manifest_args: Any) -> PoisonResult:
    """The poisoned splits and their manifest (the editor's record of where the poisons went, merged in), committed
    beside the poisons."""
    out = CaptionSplits(train, splits.test, {**splits.source, **record.source})
    manifest = build_manifest(attack=attack.name, attack_version=attack.version, params=attack.params.to_dict(),
                              seed=seed, source=splits, output=out, poisoned_indices=record.poisoned,
                              added_indices=record.added, details={**details, **record.details}, stream=record.stream,
                              **manifest_args)
    edit.commit(manifest)
    return PoisonResult(out, manifest)
