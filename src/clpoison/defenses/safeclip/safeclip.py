"""SafeCLIP (Yang, Gao, Mirzasoleiman, ICML 2024): safe CLIP pretraining against targeted poisoning and backdoors.

A *training-time* defense (``defense: {name: safeclip}``) for the CLIP method: it wraps the CLIP method
(:class:`~clpoison.defenses.safeclip.safeclip_objective.SafeCLIPMethod`), replaces the batch source
(:class:`~clpoison.defenses.safeclip.safeclip_batches.SafeCLIPBatches`), and hands the engine its LR schedule
(:class:`~clpoison.defenses.safeclip.safeclip_schedule.PhaseLR`) and an ``epoch_start`` hook through
:class:`~clpoison.engine.schedules.TrainingHooks`. The one training loop (:class:`~clpoison.engine.trainer.Trainer`)
runs everything. Parameters: :mod:`~clpoison.defenses.safeclip.safeclip_params`; the split:
:mod:`~clpoison.defenses.safeclip.safeclip_split`; the histogram: :func:`clpoison.report.plots.similarity_histogram`. The schedule, from the official code
(``shared/reference/algorithms.md`` §3.3), with epochs counted from 1:

* **Phase A** (epochs 1..``inmodal_epochs``, paper 5): unimodal CL on all pairs — image view 1 vs view 2 and EDA
  caption 1 vs EDA caption 2: ``½[CE(s·ẑ_img2·NN(ẑ_img1)ᵀ) + CE(s·ẑ_txt2·NN(ẑ_txt1)ᵀ)]`` with ``s`` the CLIP
  logit scale and ``NN`` the nearest neighbour from a FIFO memory bank (NNCLR; identity without ``memory_bank``).
  LR: linear warm-up to ``in_lr`` then cosine over the Phase A+B steps.
* **Phase B** (the next ``crossmodal_epochs``, paper 1): CLIP loss on all pairs at the constant low lr
  ``filter_lr`` (5e-6). With ``cross_aug`` the pairs are (image 1, caption 2) and (caption 1, image 2).
* **Phase C** (every later epoch): a similarity pass over all pairs (image view 1, EDA caption 1; eval mode, no
  grad) → 2-component GMM → safe/risky split (:mod:`clpoison.defenses.safeclip.safeclip_split`: first epoch posterior
  ≥ 0.9, then the top fraction growing by 0.01 per epoch up to 0.85) → one pass of unimodal CL on the risky pairs
  (``in_lr`` schedule), then one pass of the CLIP loss on the safe pairs (``cross_lr`` schedule).

Written once for data in memory and streamed shards (``data.captions.stream: true``): the batch source
:class:`~clpoison.defenses.safeclip.safeclip_batches.SafeCLIPBatches` draws from the run's
:class:`~clpoison.data.captions.pair_source.PairBatches` — same phases, plan and split, the samples named by ordinal;
EDA captions computed once in memory (as the official ``src/data.py``, :mod:`clpoison.data.captions.eda`), per caption
text on a stream, where each segment is a pass over the shards that yields only its samples (docs/safeclip.md).

**Diagnostics** (each epoch record in ``metrics.jsonl`` / ``results.json`` history): phase, safe-set size and
fraction, the split rule, and with a manifest, precision/recall of the poisons in the risky set and each poison's
similarity rank (``safeclip/poison_trace.jsonl``, one printed line per epoch: :mod:`clpoison.defenses.safeclip.safeclip_trace`);
a histogram of the similarities with poisons marked, ``safeclip/similarity_epochNNN.png`` in the run folder.

**Deviations** (docs/safeclip.md): warm-up steps can be given as a fraction of an epoch (``warmup_epochs``; the
paper's 10,000 steps never end on 5k pairs); in Phase C the cosine runs from the first filtering epoch to the end
of training over global steps (the official counter mixes warm-up epochs with a total that counts only safe
batches); the memory banks are not checkpointed (a resumed run refills them); ``image_aug: clip`` (small preset)
applies the SimCLR-style photometric augmentation to the unimodal batches only and keeps the CLIP run's geometric
augmentation elsewhere, while ``official`` applies it to every view as the official code does.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ...contexts import EpochView, TrainingContext
from ...poisoned.manifest import manifest_poisons
from ...data.augment import AugmentConfig, ViewAugment
from ...engine.schedules import TrainingHooks
from ...errors import ConfigError
from ...methods.base import Method
from ...report.plots import similarity_histogram
from ...utils.dist import is_main
from ...utils.io import atomic_write_bytes
from ..base import DEFENSES, ClipTrainingDefense
from ..clip_views import require_pair_batches
from .safeclip_batches import SafeCLIPBatches
from .safeclip_objective import SafeCLIPMethod
from .safeclip_groups import group_stats, pair_groups
from .safeclip_params import SafeCLIPParams
from .safeclip_schedule import PhaseLR
from .safeclip_split import FilterSchedule, Split, cap_excess, group_cut, poison_precision_recall, safeclip_split
from .safeclip_trace import TRACE_FILE, PoisonTrace

__all__ = ["SafeCLIP", "SafeCLIPParams", "SafeCLIPMethod", "SafeCLIPBatches", "PhaseLR"]


@DEFENSES.register("safeclip")
class SafeCLIP(ClipTrainingDefense):
    """SafeCLIP: unimodal warm-up, low-lr CLIP epoch, then GMM safe/risky split with a growing safe set."""

    name = "safeclip"
    Params = SafeCLIPParams

    def __init__(self, params: SafeCLIPParams) -> None:
        super().__init__(params)
        self.batches: Optional[SafeCLIPBatches] = None
        self.schedule: Optional[FilterSchedule] = None
        self.poisons: Optional[np.ndarray] = None
        self.out_dir: Optional[Path] = None
        self.seed = 0
        self.last: dict[str, Any] = {}
        self.histograms: list[str] = []
        self.scores: Optional[tuple[np.ndarray, np.ndarray]] = None  # (similarities, p_clean) of the last pass
        self.groups: Optional[np.ndarray] = None  # group_duplicates: a group label per pair
        self.group_info: dict[str, int] = {}
        self.lr: Optional[PhaseLR] = None
        self.trace: Optional[PoisonTrace] = None
        self.cap_warned = False

    # -- the training-time hooks ---------------------------------------------------------------------------------
    def wrap_training(self, method: Method, batches: Any, context: TrainingContext) -> tuple[Method, Any]:
        require_pair_batches(self.name, method, batches)
        if method.tokenizer is None:
            raise ConfigError("defense 'safeclip' needs the CLIP tokenizer")
        p = self.params
        self.seed = int(context.seed)
        self.out_dir = None if context.out_dir is None else Path(context.out_dir)
        self.poisons = manifest_poisons(context.manifest)
        if self.poisons is not None and len(self.poisons):
            self.trace = PoisonTrace(self.poisons, None if self.out_dir is None else self.out_dir / TRACE_FILE)
        aug = batches.augment
        big = aug.out_size >= 96
        cfg = AugmentConfig(out_size=aug.out_size, jitter=(0.5, 0.5, 0.5, 0.1), jitter_p=0.8, gray_p=0.2,
                            blur_p=(1.0, 1.0) if big else (0.0, 0.0), mean=tuple(aug.mean.flatten().tolist()),
                            std=tuple(aug.std.flatten().tolist()))
        self.batches = SafeCLIPBatches(batches, method.tokenizer, method.params.context_length, p, ViewAugment(cfg, 0),
                                       self.seed)
        self.method = SafeCLIPMethod(method, p)
        return self.method, self.batches

    def training_hooks(self) -> TrainingHooks:
        return TrainingHooks(schedule=self.make_schedule, epoch_start=[self.on_epoch_start])

    def make_schedule(self, optimizer: torch.optim.Optimizer, steps_per_epoch: int, epochs: int) -> PhaseLR:
        self.lr = PhaseLR(optimizer, self.params, steps_per_epoch, epochs)
        return self.lr

    def training_summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"last_split": self.last, "histograms": self.histograms}
        if self.group_info:
            out["duplicate_groups"] = self.group_info
        if self.trace is not None and self.trace.entries:
            out["poison_trace"] = TRACE_FILE if self.trace.path is not None else None
            out["poison_recall_by_epoch"] = {str(e["epoch"]): round(e["recall"], 6) for e in self.trace.entries}
        return out

    def trace_epoch(self, view: EpochView, epoch: int, phase: str, sims: np.ndarray, risky: np.ndarray,
                    safe_fraction: float) -> dict[str, Any]:
        """The poisons' trace entry of this epoch (safeclip_trace.py): written, printed in one line, summarised."""
        entry = self.trace.record(epoch, phase, sims, risky, safe_fraction)
        if is_main():
            self.trace.write()
            view.notify(self.trace.line(entry))
        return self.trace.summary(entry)

    # -- the last pass's scores, kept in the run folder so that a resumed run re-cuts exactly the same ones ------
    def scores_path(self) -> Optional[Path]:
        return None if self.out_dir is None else self.out_dir / "safeclip" / "last_scores.npz"

    def save_scores(self, sims: np.ndarray, p_clean: np.ndarray) -> None:
        self.scores = (np.asarray(sims), np.asarray(p_clean))
        path = self.scores_path()
        if self.params.split_every > 1 and path is not None and is_main():
            buf = io.BytesIO()
            np.savez(buf, sims=self.scores[0], p_clean=self.scores[1])
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, buf.getvalue())

    def load_scores(self) -> bool:
        path = self.scores_path()
        if path is None or not path.exists():
            return False
        with np.load(path, allow_pickle=False) as z:
            self.scores = (z["sims"], z["p_clean"])
        return True

    def duplicate_groups(self, view: EpochView, rec: dict[str, Any]) -> Optional[np.ndarray]:
        """``group_duplicates``: the pairs' groups (one keying pass, at the first use; the same on a resumed run),
        recorded and printed once."""
        p = self.params
        if not p.group_duplicates:
            return None
        if self.groups is None:
            t0 = time.perf_counter()
            images, captions = self.batches.pair_keys()
            self.groups = pair_groups(images, captions, p.group_max_size)
            self.group_info = group_stats(self.groups)
            if is_main():
                g = self.group_info
                view.notify(f"safeclip: {g['grouped_pairs']} pairs share an image or a caption with another pair "
                            f"({g['groups']} groups, largest {g['largest_group']}; keyed in "
                            f"{time.perf_counter() - t0:.1f} s); each group is split as one (group_duplicates; "
                            f"keys held by more than {p.group_max_size} pairs link nothing)")
        rec.update({f"safeclip_{k}": v for k, v in self.group_info.items()})  # every epoch: a resumed run's too
        return self.groups

    # -- per epoch -----------------------------------------------------------------------------------------------
    def on_epoch_start(self, view: EpochView, epoch: int) -> dict[str, Any]:
        p, b = self.params, self.batches
        phase = p.phase(epoch)
        everyone = np.arange(b.n)
        rec: dict[str, Any] = {"safeclip_phase": phase}
        if phase in ("inmodal", "crossmodal"):
            segments = [("inmodal" if phase == "inmodal" else "clip", everyone)]
            if p.trace_warmup and self.trace is not None and epoch > 0:  # the split a filtering epoch would make now
                sims = b.similarities(self.method.model, epoch)
                split, _ = safeclip_split(sims, 0, None, p.threshold, groups=self.duplicate_groups(view, rec),
                                          group_rule=p.group_rule)
                rec.update(self.trace_epoch(view, epoch, phase, sims, split.risky, split.ratio))
        else:
            k = epoch - p.inmodal_epochs - p.crossmodal_epochs
            if self.schedule is None and k > 0:  # resumed: the first filtering epoch's ratio is in the history
                first = [h.get("safeclip_first_ratio") for h in view.history if h.get("safeclip_first_ratio") is not None]
                if first:
                    caps = [h["safeclip_data_cap"] for h in view.history if h.get("safeclip_data_cap") is not None]
                    self.schedule = FilterSchedule(float(first[0]), p.update_filter_ratio, p.cap_filter_ratio,
                                                   caps[-1] if caps and p.cap_from_gmm else None)
            groups = self.duplicate_groups(view, rec)
            if k % p.split_every == 0 or self.schedule is None or (self.scores is None and not self.load_scores()):
                t0 = time.perf_counter()
                sims = b.similarities(self.method.model, epoch)
                t1 = time.perf_counter()
                split, self.schedule = safeclip_split(sims, k if self.schedule is not None else 0, self.schedule,
                                                      p.threshold, p.update_filter_ratio, p.cap_filter_ratio,
                                                      cap_from_gmm=p.cap_from_gmm, groups=groups,
                                                      group_rule=p.group_rule)
                rec.update({"safeclip_similarity_s": round(t1 - t0, 3), "safeclip_gmm_s": round(time.perf_counter() - t1, 3)})
                if b.unscored:  # streamed: samples skipped as corrupt, scored at the mean
                    rec["safeclip_unscored"] = b.unscored
                rec.update({f"safeclip_gmm_{n}": round(v, 6) for n, v in (split.gmm or {}).items()})
                self.save_scores(sims, split.p_clean)
                warning = cap_excess(split)
                if warning and not self.cap_warned and is_main():  # once per run; the records keep both numbers
                    self.cap_warned = True
                    view.notify(warning)
            else:  # split_every > 1: re-cut the last pass's scores at this epoch's ratio
                sims, pc = self.scores
                safe, risky = group_cut(pc, sims, groups, p.group_rule, ratio=self.schedule.ratio(k))
                split = Split(safe, risky, len(safe) / max(len(sims), 1), pc, sims, "ratio (scores reused)")
            segments = [("inmodal", split.risky), ("clip", split.safe)]
            rec.update({"safeclip_rule": split.rule, "safeclip_safe": int(len(split.safe)),
                        "safeclip_risky": int(len(split.risky)), "safeclip_safe_fraction": round(split.ratio, 6),
                        "safeclip_first_ratio": self.schedule.first_ratio, "safeclip_data_cap": self.schedule.data_cap,
                        "safeclip_similarity_mean": float(sims.mean())})
            if self.poisons is not None and len(self.poisons):
                pr = poison_precision_recall(split.risky, self.poisons)
                rec.update({f"safeclip_{k2}": v for k2, v in pr.items()})
                rec.update(self.trace_epoch(view, epoch, phase, sims, split.risky, split.ratio))
            last = epoch == view.epochs - 1
            if p.histograms and self.out_dir is not None and is_main() and (k % p.histogram_every == 0 or last):
                t2 = time.perf_counter()
                cut = float(sims[split.safe].min()) if len(split.safe) else None
                name = f"safeclip/similarity_epoch{epoch + 1:03d}.png"
                similarity_histogram(self.out_dir / name, sims, self.poisons,
                                     f"epoch {epoch + 1}: safe {len(split.safe)}/{len(sims)} ({split.rule})", cut)
                if name not in self.histograms:
                    self.histograms.append(name)
                rec["safeclip_histogram_s"] = round(time.perf_counter() - t2, 3)
            self.last = {k2: v for k2, v in rec.items() if k2 != "safeclip_phase"}
        b.set_plan(epoch, segments)
        self.lr.set_epoch(epoch, view.step, b.plan_steps(epoch))
        return rec
