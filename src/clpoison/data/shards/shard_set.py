"""A streamed CLIP training split (``data.captions.stream: true``): the shard list, the samples per shard (tar
headers), the captions in one pass, a fingerprint by file — the streamed
:class:`~clpoison.data.captions.pair_source.PairSource`.

An attack adds its poisons as extra shards (:meth:`StreamingCaptionSet.editor`, :mod:`clpoison.data.shards.shard_edits`;
:meth:`StreamingCaptionSet.with_shards`): counted, shuffled, split and tokenized with the clean ones, and hashed by
every process (:meth:`StreamingCaptionSet.check_added`). :meth:`StreamingCaptionSet.first_samples` streams only the
first samples of some shards (:meth:`StreamingCaptionSet.untouched_subset`: CleanCLIP's clean fine-tuning split).
Its batches: :mod:`clpoison.data.shards.shard_batches`.
"""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ...errors import ConfigError, DataError
from ...utils.io import sha256_file
from ..captions.caption_shards import shard_paths
from ..split_info import StreamedFromFiles
from .shard_edits import ShardEdit, clean_shard_subset
from .shard_stream import limited_samples, shard_counts


class StreamingCaptionSet(StreamedFromFiles):
    """A streamed train split: what the runner and the CLIP task need from a dataset (``len``, the captions for the
    tokenizer, a fingerprint by file: :mod:`clpoison.data.split_info`) without holding the images — the streamed
    :class:`~clpoison.data.captions.pair_source.PairSource`."""

    def __init__(self, spec: Any, image_size: int, on_error: str = "fail", name: str = "shards") -> None:
        self.shards = shard_paths(spec)
        self.image_size, self.on_error, self.name = image_size, on_error, name
        self.counts: Optional[list[int]] = shard_counts(self.shards, on_error)  # samples per shard (tar headers)
        self.n = sum(self.counts)
        if self.n == 0:
            raise DataError(f"tar shards {spec} hold no image; expected KEY.jpg|png|webp + KEY.txt members")
        self.items = [(p, -1) for p in self.shards]  # fingerprinted by file (path, size, mtime)
        self.class_names: list[str] = []
        self.labels = None
        self._captions: Optional[list[list[str]]] = None
        self.added: dict[str, str] = {}  # extra shards (an attack's poison shards): path -> sha256 when written
        self.limits: dict[str, int] = {}  # shard path -> samples read from its start (CleanCLIP's clean subset)

    def __len__(self) -> int:
        return self.n

    def __getstate__(self) -> dict:  # sent to other processes without the caption cache (they reload the tokenizer)
        return {**self.__dict__, "_captions": None}

    def with_shards(self, extra: Sequence[Path], sha256: Sequence[str], n: int,
                    captions: Optional[list[list[str]]] = None) -> "StreamingCaptionSet":
        """A copy that also streams ``extra`` shards (``n`` samples, their captions, each file's sha256), read after
        this set's shards in row order and split over processes and workers with them."""
        out = StreamingCaptionSet.__new__(StreamingCaptionSet)
        out.__dict__.update(self.__dict__)
        out.shards = self.shards + [Path(p) for p in extra]
        out.n = self.n + n
        out.counts = None if self.counts is None else self.counts + shard_counts(extra)
        out.items = self.items  # the clean files (the run's data fingerprint); the extra ones are hashed
        out.added = {**self.added, **{str(p): h for p, h in zip(extra, sha256)}}
        out._captions = None if self._captions is None or captions is None else self._captions + captions
        return out

    def first_samples(self, shards: Sequence[Path], n: int, name: str,
                      counts: Optional[Sequence[int]] = None) -> "StreamingCaptionSet":
        """A copy that streams only the first ``n`` samples of ``shards`` (in that order; ``counts``: their sample
        counts, else read from the tar headers): a shard is read up to the count (:attr:`limits`)."""
        out = StreamingCaptionSet.__new__(StreamingCaptionSet)
        out.__dict__.update(self.__dict__)
        out.shards, out.n, out.name, out._captions, out.added = [Path(p) for p in shards], int(n), name, None, {}
        out.items = [(p, -1) for p in out.shards]
        counts, left, out.limits = list(counts) if counts is not None else shard_counts(out.shards), int(n), {}
        for p, c in zip(out.shards, counts):
            if left < c:
                out.limits[str(p)] = left
            left = max(left - c, 0)
        if left:
            raise DataError(f"the {len(out.shards)} shards hold {sum(counts)} samples, fewer than {n}")
        out.counts = [min(c, out.limits.get(str(p), c)) for p, c in zip(out.shards, counts)]
        return out

    def shard_starts(self) -> dict[str, int]:
        """``{shard path: ordinal of its first sample}``: sample ``i`` of a shard has the global ordinal start + i
        (shard order = :attr:`shards`; the order of the same data held in memory)."""
        if self.counts is None:
            self.counts = shard_counts(self.shards)
        starts = itertools.accumulate([0, *self.counts[:-1]])
        return {str(p): int(a) for p, a in zip(self.shards, starts)}

    def content_fingerprint(self) -> str:
        """sha256 of the shard list (file name and size of each shard, sha256 of each extra shard) and the count."""
        h = hashlib.sha256(f"stream:{self.n}\n".encode())
        for p in self.shards:
            added = self.added.get(str(p))
            h.update(f"{p.name}:{added if added else p.stat().st_size}\n".encode())
        return h.hexdigest()

    def storage(self) -> dict[str, Any]:
        return {"streamed": True, "shards": len(self.shards), "held": f"streamed from {len(self.shards)} shards"}

    def poison_files(self) -> dict[str, str]:
        return self.check_added()

    def check_added(self) -> dict[str, str]:
        """``{file name: sha256}`` of the extra shards as this process reads them; :class:`DataError` when one is
        missing or differs from what was written (every process must see the run folder)."""
        out = {}
        for path, want in self.added.items():
            try:
                got = sha256_file(path)
            except OSError:
                raise DataError(f"poison shard '{path}' is missing on this process; put the run folder on a file "
                                "system every process sees") from None
            if got != want:
                raise DataError(f"poison shard '{path}' changed since it was written (sha256 differs); re-run with "
                                "--overwrite to write it again")
            out[Path(path).name] = got
        return out

    @property
    def captions(self) -> list[list[str]]:
        """Every sample's captions in shard order (one pass over the shards; the images are skipped, not decoded)."""
        if self._captions is None:
            self._captions = [s["captions"] for s in limited_samples(self.shards, self.limits, self.on_error)]
        return self._captions

    # -- the PairSource protocol (data/captions/pair_source.py) --------------------------------------------------
    @property
    def canvas(self) -> tuple[int, int]:
        return self.image_size, self.image_size

    def editor(self, run_dir: Optional[Path], echo: Callable[[str], None] = lambda s: None) -> ShardEdit:
        return ShardEdit(self, run_dir, echo)

    def untouched_subset(self, count: int, poisons: Optional[np.ndarray], seed: int, name: str,
                         avoid: Sequence[Path] = (), world: int = 1,
                         key: str = "count") -> tuple["StreamingCaptionSet", dict]:
        return clean_shard_subset(self, count, seed, name, avoid, world, key)

    def row_range(self, start: int, stop: int, poisons: Optional[np.ndarray], name: str, key: str = "rows") -> Any:
        raise ConfigError(f"{key}=[{start}, {stop}] names rows of data held in memory; with data.captions.stream=true "
                          "the split takes whole clean shards: take the untouched split (or data.captions.stream=false)")
