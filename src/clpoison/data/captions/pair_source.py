"""One protocol for a CLIP training split and its batches, whether the pairs are held in memory or streamed from tar
shards — the CLIP attacks and defenses are written once, against it.

Two implementations each:

* :class:`PairSource` (the split): in memory :class:`~clpoison.data.captions.CaptionDataset`, streamed
  (``data.captions.stream: true``) :class:`~clpoison.data.shards.shard_set.StreamingCaptionSet`;
* :class:`PairEdit` (poisons): in memory rows replaced in place / appended
  (:class:`~clpoison.data.captions.caption_dataset.ResidentEdit`), streamed extra shards in the run folder
  (:class:`~clpoison.data.shards.shard_edits.ShardEdit`);
* :class:`PairBatches`: in memory :class:`~clpoison.data.captions.caption_loader.CaptionBatches`, streamed
  :class:`~clpoison.data.shards.shard_batches.StreamingCaptionBatches`.

Samples are addressed by **ordinal**: the row in memory, or (streamed) the shard's first ordinal from the tar headers
plus the position in the shard — the same number for the same data. What differs between the two is what each can do
cheaply, and each keeps today's draws: a backdoor's source rows are replaced in memory but copied into an extra shard
on a stream; a clean subset is a seeded choice of rows in memory but of whole clean shards on a stream; EDA captions
are computed once per caption row in memory but per caption text on a stream; a SafeCLIP segment is ``round(n / batch)``
nearly equal batches in memory but ``n // batch`` full ones on a stream. Whether a run *can* stream is a property of
the attack and the defense (``streams``), checked once when the data is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Protocol, Sequence

import numpy as np
import torch

# an edit of the chosen images: ``edit(uint8 images, valid sizes or None) -> uint8 images`` (e.g. a trigger)
ImageEdit = Callable[[torch.Tensor, Optional[torch.Tensor]], torch.Tensor]


@dataclass
class PoisonRecord:
    """Where an edit put the poisons, in the manifest's words: rows changed in place (``poisoned``), rows appended
    (``added``), extra ``details`` and the ``stream`` section (streamed only), extra ``source`` entries of the splits."""

    poisoned: Sequence[int] = ()
    added: Sequence[int] = ()
    details: dict = field(default_factory=dict)
    stream: Optional[dict] = None
    source: dict = field(default_factory=dict)


class PairEdit(Protocol):
    """Poisons written into a :class:`PairSource`; the source itself is never modified."""

    def reused(self, request: Callable[[], dict]) -> Optional[tuple["PairSource", dict, dict]]:
        """``(split, extra source entries, manifest)`` of poisons written earlier for exactly ``request()`` and still
        intact (streamed: the poison shards' sha256), else ``None`` — then nothing is drawn."""

    def replace(self, rows: torch.Tensor, captions: list[list[str]], edit: ImageEdit,
                name: str) -> tuple["PairSource", PoisonRecord]:
        """The samples at ``rows`` with ``edit`` applied to their images and these captions."""

    def add(self, images: Sequence[torch.Tensor] | torch.Tensor, captions: list[list[str]], labels: Sequence[int],
            sizes: Optional[torch.Tensor], name: str) -> tuple["PairSource", PoisonRecord]:
        """New pairs after the last sample."""

    def commit(self, manifest: dict) -> None:
        """Record the manifest beside what was written (streamed: for :meth:`reused`)."""


class PairSource(Protocol):
    """A CLIP training split: ``len`` samples named by ordinal, their captions, the poisons and subsets of it."""

    name: str
    class_names: list[str]
    labels: Optional[torch.Tensor]

    def __len__(self) -> int: ...

    @property
    def captions(self) -> list[list[str]]:
        """Every sample's captions, by ordinal (streamed: one pass over the shards, no image decoded)."""

    @property
    def canvas(self) -> tuple[int, int]:
        """(height, width) every image fits in (what a trigger must fit)."""

    def editor(self, run_dir: Optional[Path], echo: Callable[[str], None]) -> PairEdit:
        """Where an attack writes its poisons (streamed: ``run_dir/poison_shards``; in memory: nowhere)."""

    def untouched_subset(self, count: int, poisons: Optional[np.ndarray], seed: int, name: str, avoid: Sequence[Path],
                         world: int, key: str) -> tuple["PairSource", dict]:
        """``count`` samples no poison touched, seeded (in memory: rows; streamed: the first ``count`` samples of a
        seeded choice of whole clean shards, none of ``avoid``), and a record of the choice."""

    def row_range(self, start: int, stop: int, poisons: Optional[np.ndarray], name: str, key: str) -> "PairSource":
        """Rows ``[start, stop)``, none of them a poison (streamed: refused, a stream has no rows to pick)."""


class PairBatches(Protocol):
    """CLIP batches of a :class:`PairSource` (``{"images", "tokens", ...}``), plus what the CLIP defenses need.

    A *raw* batch (``epoch(e, raw=True)``, ``segment``, ``score``) also holds ``images_uint8`` (the decoded batch on
    the device, before augmentation), ``sizes`` (valid sizes or None) and what names its captions
    (``caption_index`` rows in memory, ``texts`` streamed)."""

    batch_size: int  # this process's share of the global batch
    device: torch.device
    seed: int
    augment: Any
    memory_format: torch.memory_format
    unscored: int  # samples the last score pass could not score

    def __len__(self) -> int: ...

    @property
    def n(self) -> int: ...

    def epoch(self, epoch: int, raw: bool = False) -> Iterator[dict[str, Any]]: ...

    def with_tokenizer(self, tokenizer: Any, context_length: int) -> "PairBatches": ...

    def eda_views(self, tokenizer: Any, context_length: int, seed: int, alpha: float,
                  views: int = 1) -> Callable[[dict[str, Any], int], torch.Tensor]:
        """``views(raw batch, k)``: token rows (full context length) of EDA view ``k`` of the batch's captions."""

    def caption_tokens(self, batch: dict[str, Any]) -> torch.Tensor:
        """Token rows (full context length) of a raw batch's chosen captions."""

    def segment_steps(self, count: int) -> int: ...

    def segment(self, epoch: int, j: int, rows: Any) -> Iterator[dict[str, Any]]:
        """Raw batches of the samples ``rows`` only (segment ``j`` of ``epoch``), ``segment_steps`` of them."""

    def score(self, fn: Callable[[dict[str, Any]], torch.Tensor], epoch: int, batch_size: int) -> np.ndarray:
        """``fn(raw batch)`` of every sample — one value (B,) or several (B, K), as float32 — by ordinal, the same
        array on every process."""


def _implements(obj: Any, proto: type) -> bool:
    """Whether ``obj``'s class defines every method of ``proto`` (looked up on the class: no property is run, so a
    streamed split is not read to be checked)."""
    names = [k for k, v in vars(proto).items() if callable(v) and not k.startswith("_")]
    return all(hasattr(type(obj), k) for k in names)


def is_pair_source(obj: Any) -> bool:
    return _implements(obj, PairSource)


def is_pair_batches(obj: Any) -> bool:
    return _implements(obj, PairBatches)
