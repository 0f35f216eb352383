"""SafeCLIP's hyper-parameters and phase plan (Yang, Gao, Mirzasoleiman, ICML 2024; official defaults).

Epochs (0-based) run Phase A ``inmodal`` (unimodal CL on every pair), Phase B ``crossmodal`` (CLIP at the low
``filter_lr``), then Phase C ``filtered`` (GMM safe/risky split every epoch); see :mod:`clpoison.defenses.safeclip.safeclip`.

Example::

    >>> p = SafeCLIPParams(inmodal_epochs=2, crossmodal_epochs=1)
    >>> [p.phase(e) for e in range(4)]
    ['inmodal', 'inmodal', 'crossmodal', 'filtered']
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ...errors import ConfigError
from ..base import DefenseParams


@dataclass
class SafeCLIPParams(DefenseParams):
    inmodal_epochs: int = 5  # Phase A (official inmodal_warmup)
    crossmodal_epochs: int = 1  # Phase B (official multimodal_warmup)
    in_lr: float = 5e-4
    cross_lr: float = 5e-4
    filter_lr: float = 5e-6  # the constant low lr of Phase B
    warmup_steps: int = 10000  # official num_warmup_steps
    warmup_epochs: Optional[float] = None  # if set, warm-up = this fraction of an epoch (overrides warmup_steps)
    memory_bank: bool = False
    memory_bank_size: int = 256
    threshold: float = 0.9  # first split: posterior of the clean component >= threshold
    update_filter_ratio: float = 0.01
    cap_filter_ratio: float = 0.85
    cap_from_gmm: bool = False  # also cap the safe fraction at the clean GMM component's weight (not official)
    cross_aug: bool = True
    eda_alpha: float = 0.1
    image_aug: str = "official"  # official: photometric aug on every view | clip: unimodal batches only
    inmodal_loss: str = "official"  # official: CE(s·z2·NN(z1)ᵀ) | nt_xent: NT-Xent with temperature 1/s
    eval_batch_size: int = 2048
    histograms: bool = True
    histogram_every: int = 1  # draw the histogram every k-th filtering epoch (the first and the last always)
    split_every: int = 1  # recompute similarities + GMM every k-th filtering epoch (official: 1); in between the
    # last scores are re-cut at the epoch's safe ratio (the growth schedule is unchanged)
    trace_warmup: bool = False  # with a manifest: also score the pairs in every warm-up epoch after the first (one
    # similarity pass each) to trace the poisons' ranks before filtering starts (safeclip_trace.py)
    group_duplicates: bool = False  # not official: pairs sharing an image or a caption are split as one, at the
    # group's lowest posterior (safeclip_groups.py; against the repeats of the Carlini & Terzis attacks)
    group_max_size: int = 64  # a key (image or caption) held by more pairs than this links nothing
    group_rule: str = "min"  # min: a pair is ranked at its group's lowest posterior | veto: ranked on its own, safe
    # only when every pair of its group is in the safe cut (the safe set shrinks; no pair is pushed into it) |
    # veto_refill: veto, then the safe set filled back to the epoch's ratio with ungrouped pairs in their own order
    similarity_view: str = "official"  # official: augmented image view + EDA caption 1 | clean: the image as stored
    # and the caption as written (what `clpoison scan` scores)

    def __post_init__(self) -> None:
        if self.inmodal_epochs < 0 or self.crossmodal_epochs < 0:
            raise ConfigError("defense.params.inmodal_epochs and crossmodal_epochs must be >= 0")
        for k in ("in_lr", "cross_lr", "filter_lr", "memory_bank_size", "eval_batch_size"):
            if not getattr(self, k) > 0:
                raise ConfigError(f"defense.params.{k}={getattr(self, k)} must be > 0")
        if self.warmup_steps < 0 or (self.warmup_epochs is not None and self.warmup_epochs < 0):
            raise ConfigError("defense.params.warmup_steps / warmup_epochs must be >= 0")
        if not 0 < self.threshold < 1 or not 0 < self.cap_filter_ratio <= 1 or self.update_filter_ratio < 0:
            raise ConfigError("defense.params: threshold in (0,1), cap_filter_ratio in (0,1], update_filter_ratio >= 0")
        if self.group_rule not in ("min", "veto", "veto_refill"):
            raise ConfigError(f"defense.params.group_rule='{self.group_rule}' unknown; choose min, veto or veto_refill")
        if self.group_max_size < 2:
            raise ConfigError(f"defense.params.group_max_size={self.group_max_size} must be >= 2")
        for k in ("histogram_every", "split_every"):
            if getattr(self, k) < 1:
                raise ConfigError(f"defense.params.{k}={getattr(self, k)} must be >= 1")
        if self.image_aug not in ("official", "clip"):
            raise ConfigError(f"defense.params.image_aug='{self.image_aug}' unknown; choose official or clip")
        if self.similarity_view not in ("official", "clean"):
            raise ConfigError(f"defense.params.similarity_view='{self.similarity_view}' unknown; choose official or clean")
        if self.inmodal_loss not in ("official", "nt_xent"):
            raise ConfigError(f"defense.params.inmodal_loss='{self.inmodal_loss}' unknown; choose official or nt_xent")

    def phase(self, epoch: int) -> str:
        """Phase of 0-based ``epoch``: ``inmodal`` | ``crossmodal`` | ``filtered``."""
        if epoch < self.inmodal_epochs:
            return "inmodal"
        if epoch < self.inmodal_epochs + self.crossmodal_epochs:
            return "crossmodal"
        return "filtered"
