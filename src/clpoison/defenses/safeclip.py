"""SafeCLIP (Yang, Gao, Mirzasoleiman, ICML 2024): safe CLIP pretraining against targeted poisoning and backdoors.

A *training-time* defense (``defense: {name: safeclip}``) for the CLIP method: it wraps the CLIP method
(:class:`SafeCLIPMethod`), replaces the batch source (:class:`SafeCLIPBatches`) and the engine's LR schedule
(:class:`PhaseLR`), and acts at the start of every epoch through the engine's ``on_epoch_start`` hook. The one
training loop (:class:`~clpoison.engine.trainer.Trainer`) runs everything. The schedule, from the official code
(``shared/reference/algorithms.md`` §3.3), with epochs counted from 1:

* **Phase A** (epochs 1..``inmodal_epochs``, paper 5): unimodal CL on all pairs — image view 1 vs view 2 and EDA
  caption 1 vs EDA caption 2: ``½[CE(s·ẑ_img2·NN(ẑ_img1)ᵀ) + CE(s·ẑ_txt2·NN(ẑ_txt1)ᵀ)]`` with ``s`` the CLIP
  logit scale and ``NN`` the nearest neighbour from a FIFO memory bank (NNCLR; identity without ``memory_bank``).
  LR: linear warm-up to ``in_lr`` then cosine over the Phase A+B steps.
* **Phase B** (the next ``crossmodal_epochs``, paper 1): CLIP loss on all pairs at the constant low lr
  ``filter_lr`` (5e-6). With ``cross_aug`` the pairs are (image 1, caption 2) and (caption 1, image 2).
* **Phase C** (every later epoch): a similarity pass over all pairs (image view 1, EDA caption 1; eval mode, no
  grad) → 2-component GMM → safe/risky split (:mod:`clpoison.defenses.safeclip_split`: first epoch posterior
  ≥ 0.9, then the top fraction growing by 0.01 per epoch up to 0.85) → one pass of unimodal CL on the risky pairs
  (``in_lr`` schedule), then one pass of the CLIP loss on the safe pairs (``cross_lr`` schedule).

EDA captions are computed once when the batch source is built (as the official ``src/data.py``), see
:mod:`clpoison.data.eda`.

**Diagnostics** (each epoch record in ``metrics.jsonl`` / ``results.json`` history): phase, safe-set size and
fraction, the split rule, and with a manifest, precision/recall of the poisons in the risky set; a histogram of
the similarities with poisons marked, ``safeclip/similarity_epochNNN.png`` in the run folder.

**Deviations** (docs/safeclip.md): warm-up steps can be given as a fraction of an epoch (``warmup_epochs``; the
paper's 10,000 steps never end on 5k pairs); in Phase C the cosine runs from the first filtering epoch to the end
of training over global steps (the official counter mixes warm-up epochs with a total that counts only safe
batches); the memory banks are not checkpointed (a resumed run refills them); ``image_aug: clip`` (small preset)
applies the SimCLR-style photometric augmentation to the unimodal batches only and keeps the CLIP run's geometric
augmentation elsewhere, while ``official`` applies it to every view as the official code does.
"""

from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.augment import AugmentConfig, ViewAugment, crop_resize_flip
from ..data.caption_loader import CaptionBatches, CaptionImageAugment, flat_captions
from ..data.eda import eda_views
from ..data.loader import epoch_permutation
from ..errors import ConfigError
from ..methods.base import Method
from ..methods.clip import clip_loss
from ..methods.simclr import nt_xent_loss
from ..utils.io import atomic_write_bytes
from .base import DEFENSES, Defense, DefenseParams
from .safeclip_split import FilterSchedule, Split, poison_precision_recall, safeclip_split, split_by_ratio


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
    cross_aug: bool = True
    eda_alpha: float = 0.1
    image_aug: str = "official"  # official: photometric aug on every view | clip: unimodal batches only
    inmodal_loss: str = "official"  # official: CE(s·z2·NN(z1)ᵀ) | nt_xent: NT-Xent with temperature 1/s
    eval_batch_size: int = 2048
    histograms: bool = True
    histogram_every: int = 1  # draw the histogram every k-th filtering epoch (the first and the last always)
    split_every: int = 1  # recompute similarities + GMM every k-th filtering epoch (official: 1); in between the
    # last scores are re-cut at the epoch's safe ratio (the growth schedule is unchanged)
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


# -- losses -------------------------------------------------------------------------------------------------------


class MemoryBank(nn.Module):
    """FIFO bank of L2-normalised embeddings; ``nearest(z)`` returns each row's nearest neighbour from the bank's
    *previous* contents (no gradient), then stores ``z`` (NNCLR / lightly ``NNMemoryBankModule``)."""

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.size = size
        self.register_buffer("bank", torch.zeros(size, dim), persistent=False)
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long), persistent=False)
        self.register_buffer("filled", torch.zeros((), dtype=torch.long), persistent=False)

    @torch.no_grad()
    def push(self, z: torch.Tensor) -> None:
        z = z.detach().float()[-self.size:]
        n, p = len(z), int(self.ptr)
        idx = (torch.arange(n, device=z.device) + p) % self.size
        self.bank[idx] = z
        self.ptr.fill_((p + n) % self.size)
        self.filled.fill_(min(self.size, int(self.filled) + n))

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        f = int(self.filled)
        if f == 0:
            out = z
        else:
            with torch.no_grad():
                bank = self.bank[:f]
                out = bank[(F.normalize(z.detach().float(), dim=1) @ bank.t()).argmax(1)].to(z.dtype)
        self.push(z)
        return out


def inmodal_term(z1: torch.Tensor, z2: torch.Tensor, scale: torch.Tensor, bank: Optional[MemoryBank] = None,
                 kind: str = "official") -> torch.Tensor:
    """Unimodal contrastive term: ``CE(s·z2·NN(z1)ᵀ, diag)`` (official) or NT-Xent at temperature 1/s."""
    anchor = bank.nearest(z1) if bank is not None else z1
    if kind == "nt_xent":
        return nt_xent_loss(anchor, z2, 1.0 / scale)
    logits = scale * z2.float() @ anchor.float().t()
    return F.cross_entropy(logits, torch.arange(len(z1), device=z1.device))


def cross_aug_clip_loss(i1: torch.Tensor, i2: torch.Tensor, t1: torch.Tensor, t2: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Official ``cross_aug`` CLIP loss: ½[CE(s·I₁T₂ᵀ) + CE(s·T₁I₂ᵀ)]."""
    labels = torch.arange(len(i1), device=i1.device)
    return 0.5 * (F.cross_entropy(scale * i1.float() @ t2.float().t(), labels)
                  + F.cross_entropy(scale * t1.float() @ i2.float().t(), labels))


class SafeCLIPMethod(Method):
    """Wraps a trained-from-scratch :class:`~clpoison.methods.clip.CLIP`: dispatches on ``batch["phase"]``.

    Its state dict *is* the CLIP's (the memory banks are not saved), so a SafeCLIP checkpoint loads wherever a CLIP
    checkpoint does (``clpoison evaluate``, ``clpoison scan``)."""

    name = "safeclip"
    modality = "image-text"

    def __init__(self, clip: Method, params: SafeCLIPParams) -> None:
        super().__init__()
        self.clip = clip
        self.params = params
        dim = clip.params.embed_dim
        self.image_bank = MemoryBank(params.memory_bank_size, dim) if params.memory_bank else None
        self.text_bank = MemoryBank(params.memory_bank_size, dim) if params.memory_bank else None

    @property
    def model(self) -> nn.Module:
        return self.clip.model

    @property
    def encoder(self) -> nn.Module:
        return self.clip.encoder

    @property
    def tokenizer(self):
        return self.clip.tokenizer

    def state_dict(self, *args, **kwargs):
        return self.clip.state_dict(*args, **kwargs)

    def load_state_dict(self, state, strict: bool = True, assign: bool = False):
        return self.clip.load_state_dict(state, strict=strict, assign=assign)

    def training_step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        m = self.model
        scale = m.scale()
        two = "images2" in batch
        if two:
            i1, i2 = m.encode_image(torch.cat([batch["images"], batch["images2"]])).chunk(2)
            t1, t2 = m.encode_text(torch.cat([batch["tokens"], batch["tokens2"]])).chunk(2)
        if batch["phase"] == "inmodal":
            kind = self.params.inmodal_loss
            loss = 0.5 * (inmodal_term(i1, i2, scale, self.image_bank, kind) + inmodal_term(t1, t2, scale, self.text_bank, kind))
            return loss, {"logit_scale": float(scale.detach()), "safeclip_inmodal": 1.0}
        if two:
            loss = cross_aug_clip_loss(i1, i2, t1, t2, scale)
        else:
            img, txt, _ = m(batch["images"], batch["tokens"])
            loss = clip_loss(img, txt, scale)
        return loss, {"logit_scale": float(scale.detach()), "safeclip_inmodal": 0.0}


# -- data ---------------------------------------------------------------------------------------------------------


def pad_cat(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Trim two token batches to one common length (the longest caption of either)."""
    n = int(max((a != 0).sum(1).max(), (b != 0).sum(1).max()))
    return a[:, :n], b[:, :n]


class SafeCLIPBatches:
    """Batches for every SafeCLIP phase, drawn from a :class:`CaptionBatches` (its resident images, tokens,
    caption choice and geometric augmentation) plus two frozen EDA token views. ``set_plan(epoch, segments)`` with
    ``segments = [(kind, indices), ...]`` (kind ``inmodal`` or ``clip``) decides what ``epoch(epoch)`` yields:
    each segment in order, its indices shuffled by (seed, epoch) and cut into ``round(n / batch_size)`` nearly
    equal batches (so a small subset still trains)."""

    def __init__(self, base: CaptionBatches, eda_tokens: tuple[torch.Tensor, torch.Tensor], params: SafeCLIPParams,
                 photometric: nn.Module) -> None:
        self.base, self.params = base, params
        self.eda1, self.eda2 = (t.to(base.device) for t in eda_tokens)
        self.photometric = photometric.to(base.device)
        a = base.augment  # the same crop/resize/normalise with the whole image as the box and no flip
        self.unaugmented = CaptionImageAugment(a.out_size, "none", flip_p=0.0, mean=a.mean.flatten().tolist(),
                                               std=a.std.flatten().tolist()).to(base.device)
        self.batch_size = base.batch_size
        self.plans: dict[int, list[tuple[str, torch.Tensor]]] = {}

    def __len__(self) -> int:
        return len(self.base)

    @property
    def n(self) -> int:
        return self.base.n

    def set_plan(self, epoch: int, segments: list[tuple[str, Any]]) -> None:
        self.plans = {epoch: [(k, torch.as_tensor(np.asarray(i), dtype=torch.long)) for k, i in segments]}

    def segment_steps(self, n: int) -> int:
        return 0 if n < 2 else max(1, round(n / self.batch_size))

    def plan_steps(self, epoch: int) -> list[tuple[str, int]]:
        return [(k, self.segment_steps(len(i))) for k, i in self.plans.get(epoch, [])]

    def clean_view(self, idx: torch.Tensor) -> torch.Tensor:
        """The images as stored (whole valid area, no flip), resized to the training size and normalised."""
        b = self.base
        return self.unaugmented(b.images[idx], None if b.sizes is None else b.sizes[idx]).contiguous(
            memory_format=b.memory_format)

    def view(self, idx: torch.Tensor, strong: bool) -> torch.Tensor:
        b = self.base
        aug = b.augment
        if not strong:
            out = aug(b.images[idx], None if b.sizes is None else b.sizes[idx])
        else:
            x = b.images[idx].float().div(255.0)
            n, _, hc, wc = x.shape
            hw = b.sizes[idx] if b.sizes is not None else torch.tensor([[hc, wc]], device=x.device).expand(n, 2)
            flip = torch.rand(n, device=x.device) < aug.flip_p
            x = crop_resize_flip(x, aug.boxes(hw), (aug.out_size, aug.out_size), flip)
            out = self.photometric(x)
        return out.contiguous(memory_format=b.memory_format)

    def make_batch(self, kind: str, idx: torch.Tensor, choice: torch.Tensor) -> dict[str, Any]:
        rows = choice[idx]
        strong_all = self.params.image_aug == "official"
        if kind == "clip" and not self.params.cross_aug:
            tok = self.base.tokens[rows]
            tok = tok[:, : int((tok != 0).sum(1).max())]
            return {"phase": "clip", "index": idx, "images": self.view(idx, strong_all), "tokens": tok}
        strong = strong_all or kind == "inmodal"
        t1, t2 = pad_cat(self.eda1[rows], self.eda2[rows])
        return {"phase": kind, "index": idx, "images": self.view(idx, strong), "images2": self.view(idx, strong),
                "tokens": t1, "tokens2": t2}

    def epoch(self, epoch: int):
        b = self.base
        segments = self.plans.get(epoch)
        if segments is None:
            raise RuntimeError(f"SafeCLIPBatches: no plan for epoch {epoch}; the defense's on_epoch_start hook sets it")
        choice = b.caption_choice(epoch)
        for j, (kind, idx) in enumerate(segments):
            steps = self.segment_steps(len(idx))
            if steps == 0:
                continue
            perm = idx.to(b.device)[epoch_permutation(len(idx), b.seed, epoch * 16 + j).to(b.device)]
            for chunk in torch.tensor_split(perm, steps):
                yield self.make_batch(kind, chunk, choice)

    @torch.no_grad()
    def similarities(self, model: nn.Module, epoch: int) -> np.ndarray:
        """cos(image, caption) of every pair, eval mode. ``similarity_view`` official: image view 1 and EDA caption 1
        (the official code's view 0 of the augmented data); clean: the stored image and the caption as written."""
        was = model.training
        model.eval()
        choice = self.base.caption_choice(epoch)
        g = torch.random.get_rng_state()
        torch.manual_seed(int(self.base.seed) * 7_919 + epoch)  # the pass does not shift the training RNG stream
        out = []
        bs = self.params.eval_batch_size
        clean = self.params.similarity_view == "clean"
        for s in range(0, self.n, bs):
            idx = torch.arange(s, min(s + bs, self.n), device=self.base.device)
            rows = choice[idx]
            tok = (self.base.tokens if clean else self.eda1)[rows]
            tok = tok[:, : int((tok != 0).sum(1).max())]
            img = model.encode_image(self.clean_view(idx) if clean else self.view(idx, self.params.image_aug == "official"))
            txt = model.encode_text(tok)
            out.append((img.float() * txt.float()).sum(1).cpu())
        torch.random.set_rng_state(g)
        model.train(was)
        return torch.cat(out).numpy()


# -- learning rate ------------------------------------------------------------------------------------------------


class PhaseLR:
    """The SafeCLIP LR schedule, a drop-in for the engine's scheduler (``step``, ``get_last_lr``, state dict).

    The lr of global step ``t`` depends on the epoch plan: Phase A ``in_lr`` · warm-up · cosine over the Phase A+B
    steps; Phase B ``filter_lr`` constant; Phase C ``in_lr`` (risky segment) or ``cross_lr`` (safe segment) ·
    warm-up · cosine from the first filtering epoch to the end of training. Warm-up = ``(t+1)/W`` for ``t < W``."""

    def __init__(self, optimizer: torch.optim.Optimizer, params: SafeCLIPParams, steps_per_epoch: int, epochs: int) -> None:
        self.optimizer, self.p, self.spe, self.epochs = optimizer, params, steps_per_epoch, epochs
        w = params.warmup_steps if params.warmup_epochs is None else params.warmup_epochs * steps_per_epoch
        self.warmup = max(0, int(round(w)))
        self.t = 0
        self.epoch = 0
        self.epoch_start = 0
        self.segments: list[tuple[str, int]] = []
        self.last_lr = 0.0

    def set_epoch(self, epoch: int, step: int, segments: list[tuple[str, int]]) -> None:
        self.epoch, self.t, self.epoch_start, self.segments = epoch, step, step, segments
        self.apply()

    def warm(self, t: int) -> float:
        return 1.0 if t >= self.warmup else (t + 1) / self.warmup

    def lr_at(self, t: int) -> float:
        p = self.p
        phase = p.phase(self.epoch)
        if phase == "inmodal":
            total = (p.inmodal_epochs + p.crossmodal_epochs) * self.spe
            w = min(self.warmup, total - 1)
            if t < w:
                return p.in_lr * (t + 1) / w
            return p.in_lr * 0.5 * (1 + math.cos(math.pi * min(1.0, (t - w) / max(1, total - w))))
        if phase == "crossmodal":
            return p.filter_lr
        # cosine over the filtering epochs by epoch fraction: a filtering epoch's step count follows the split
        # (risky + safe segments), so it is not steps_per_epoch
        first = p.inmodal_epochs + p.crossmodal_epochs
        offset = t - self.epoch_start
        in_epoch = max(1, sum(n for _, n in self.segments))
        frac = (self.epoch - first + min(offset, in_epoch) / in_epoch) / max(1, self.epochs - first)
        cos = 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, frac))))
        kind = "clip"
        for k, n in self.segments:
            if offset < n:
                kind = k
                break
            offset -= n
        return (p.in_lr if kind == "inmodal" else p.cross_lr) * self.warm(t) * cos

    def apply(self) -> None:
        self.last_lr = self.lr_at(self.t)
        for g in self.optimizer.param_groups:
            g["lr"] = self.last_lr

    def step(self) -> None:
        self.t += 1
        self.apply()

    def get_last_lr(self) -> list[float]:
        return [self.last_lr]

    def state_dict(self) -> dict:
        return {"t": self.t, "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.t, self.epoch = int(state.get("t", 0)), int(state.get("epoch", 0))


# -- the defense --------------------------------------------------------------------------------------------------


def manifest_poisons(manifest: Optional[dict]) -> Optional[np.ndarray]:
    if not manifest:
        return None
    idx = list(manifest.get("poisoned_indices") or []) + list(manifest.get("added_indices") or [])
    return np.unique(np.asarray(idx, dtype=np.int64))


def similarity_histogram(path: Path, sims: np.ndarray, poisons: Optional[np.ndarray], title: str,
                         cut: Optional[float] = None) -> Path:
    """PNG histogram of similarities, clean vs poisons (matplotlib Agg; a plain PIL drawing if matplotlib is
    missing). ``cut`` = the lowest similarity in the safe set, drawn as a vertical line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = np.zeros(len(sims), bool)
    if poisons is not None and len(poisons):
        mask[poisons[poisons < len(sims)]] = True
    bins = np.linspace(float(sims.min()) - 1e-6, float(sims.max()) + 1e-6, 41)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.hist(sims[~mask], bins=bins, alpha=0.7, label=f"other pairs ({int((~mask).sum())})")
        if mask.any():
            ax.hist(sims[mask], bins=bins, alpha=0.8, color="red", label=f"poisons ({int(mask.sum())})")
        if cut is not None:
            ax.axvline(cut, color="k", ls="--", lw=1, label="safe-set cut")
        ax.set_xlabel("cosine similarity (image, caption)")
        ax.set_ylabel("pairs")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path
    except ImportError:
        pass
    from PIL import Image, ImageDraw

    w, h, pad = 480, 260, 30
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    hc, _ = np.histogram(sims[~mask], bins)
    hp, _ = np.histogram(sims[mask], bins)
    top = max(1, int(hc.max(initial=0)), int(hp.max(initial=0)))
    bw = (w - 2 * pad) / (len(bins) - 1)
    for i, (a, b) in enumerate(zip(hc, hp)):
        x0 = pad + i * bw
        for cnt, col, dx in ((a, (70, 110, 200), 0), (b, (220, 40, 40), bw / 2)):
            if cnt:
                d.rectangle([x0 + dx, h - pad - (h - 2 * pad) * cnt / top, x0 + dx + bw / 2 - 1, h - pad], fill=col)
    if cut is not None:
        xc = pad + (cut - bins[0]) / (bins[-1] - bins[0]) * (w - 2 * pad)
        d.line([xc, pad, xc, h - pad], fill="black")
    d.line([pad, h - pad, w - pad, h - pad], fill="black")
    d.text((pad, 5), f"{title}  blue: other pairs, red: poisons", fill="black")
    d.text((pad, h - pad + 5), f"{bins[0]:.2f}", fill="black")
    d.text((w - pad - 30, h - pad + 5), f"{bins[-1]:.2f}", fill="black")
    img.save(path)
    return path


@DEFENSES.register("safeclip")
class SafeCLIP(Defense):
    """SafeCLIP: unimodal warm-up, low-lr CLIP epoch, then GMM safe/risky split with a growing safe set."""

    name = "safeclip"
    Params = SafeCLIPParams

    def __init__(self, params: SafeCLIPParams) -> None:
        super().__init__(params)
        self.method: Optional[SafeCLIPMethod] = None
        self.batches: Optional[SafeCLIPBatches] = None
        self.schedule: Optional[FilterSchedule] = None
        self.poisons: Optional[np.ndarray] = None
        self.out_dir: Optional[Path] = None
        self.seed = 0
        self.last: dict[str, Any] = {}
        self.histograms: list[str] = []
        self.scores: Optional[tuple[np.ndarray, np.ndarray]] = None  # (similarities, p_clean) of the last pass

    # -- the training-time hooks ---------------------------------------------------------------------------------
    def wrap_training(self, method: Method, batches: Any, context: dict[str, Any]) -> tuple[Method, Any]:
        if getattr(method, "modality", "image") != "image-text" or not isinstance(batches, CaptionBatches):
            raise ConfigError("defense 'safeclip' needs an image-text method (method.name=clip)")
        p = self.params
        self.seed = int(context.get("seed", 0))
        self.out_dir = None if context.get("out_dir") is None else Path(context["out_dir"])
        self.poisons = manifest_poisons(context.get("manifest"))
        train_set = context.get("train_set")
        captions = flat_captions(train_set) if train_set is not None else None
        if captions is None or method.tokenizer is None:
            raise ConfigError("defense 'safeclip' needs the training captions and the CLIP tokenizer")
        v1, v2 = eda_views(captions, self.seed, p.eda_alpha)
        ctx = method.params.context_length
        eda_tokens = (method.tokenizer.encode(v1, ctx), method.tokenizer.encode(v2, ctx))
        aug = batches.augment
        big = aug.out_size >= 96
        cfg = AugmentConfig(out_size=aug.out_size, jitter=(0.5, 0.5, 0.5, 0.1), jitter_p=0.8, gray_p=0.2,
                            blur_p=(1.0, 1.0) if big else (0.0, 0.0), mean=tuple(aug.mean.flatten().tolist()),
                            std=tuple(aug.std.flatten().tolist()))
        self.batches = SafeCLIPBatches(batches, eda_tokens, p, ViewAugment(cfg, 0))
        self.method = SafeCLIPMethod(method, p)
        return self.method, self.batches

    def attach(self, trainer: Any) -> None:
        trainer.scheduler = PhaseLR(trainer.optimizer, self.params, trainer.steps_per_epoch, trainer.cfg.epochs)
        trainer.on_epoch_start.append(self.on_epoch_start)

    def training_summary(self) -> dict[str, Any]:
        return {"last_split": self.last, "histograms": self.histograms}

    # -- the last pass's scores, kept in the run folder so that a resumed run re-cuts exactly the same ones ------
    def scores_path(self) -> Optional[Path]:
        return None if self.out_dir is None else self.out_dir / "safeclip" / "last_scores.npz"

    def save_scores(self, sims: np.ndarray, p_clean: np.ndarray) -> None:
        self.scores = (np.asarray(sims), np.asarray(p_clean))
        path = self.scores_path()
        if self.params.split_every > 1 and path is not None:
            buf = io.BytesIO()
            np.savez(buf, sims=self.scores[0], p_clean=self.scores[1])
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, buf.getvalue())

    def load_scores(self) -> bool:
        path = self.scores_path()
        if path is None or not path.exists():
            return False
        with np.load(path) as z:
            self.scores = (z["sims"], z["p_clean"])
        return True

    # -- per epoch -----------------------------------------------------------------------------------------------
    def on_epoch_start(self, trainer: Any, epoch: int) -> dict[str, Any]:
        p, b = self.params, self.batches
        phase = p.phase(epoch)
        everyone = np.arange(b.n)
        rec: dict[str, Any] = {"safeclip_phase": phase}
        if phase == "inmodal":
            segments = [("inmodal", everyone)]
        elif phase == "crossmodal":
            segments = [("clip", everyone)]
        else:
            k = epoch - p.inmodal_epochs - p.crossmodal_epochs
            if self.schedule is None and k > 0:  # resumed: the first filtering epoch's ratio is in the history
                first = [h.get("safeclip_first_ratio") for h in trainer.history if h.get("safeclip_first_ratio") is not None]
                if first:
                    self.schedule = FilterSchedule(float(first[0]), p.update_filter_ratio, p.cap_filter_ratio)
            if k % p.split_every == 0 or self.schedule is None or (self.scores is None and not self.load_scores()):
                t0 = time.perf_counter()
                sims = b.similarities(self.method.model, epoch)
                t1 = time.perf_counter()
                split, self.schedule = safeclip_split(sims, k if self.schedule is not None else 0, self.schedule,
                                                      p.threshold, p.update_filter_ratio, p.cap_filter_ratio)
                rec.update({"safeclip_similarity_s": round(t1 - t0, 3), "safeclip_gmm_s": round(time.perf_counter() - t1, 3)})
                self.save_scores(sims, split.p_clean)
            else:  # split_every > 1: re-cut the last pass's scores at this epoch's ratio
                sims, pc = self.scores
                safe, risky = split_by_ratio(pc, self.schedule.ratio(k), sims)
                split = Split(safe, risky, len(safe) / max(len(sims), 1), pc, sims, "ratio (scores reused)")
            segments = [("inmodal", split.risky), ("clip", split.safe)]
            rec.update({"safeclip_rule": split.rule, "safeclip_safe": int(len(split.safe)),
                        "safeclip_risky": int(len(split.risky)), "safeclip_safe_fraction": round(split.ratio, 6),
                        "safeclip_first_ratio": self.schedule.first_ratio,
                        "safeclip_similarity_mean": float(sims.mean())})
            if self.poisons is not None and len(self.poisons):
                pr = poison_precision_recall(split.risky, self.poisons)
                rec.update({f"safeclip_{k2}": v for k2, v in pr.items()})
            last = epoch == trainer.cfg.epochs - 1
            if p.histograms and self.out_dir is not None and (k % p.histogram_every == 0 or last):
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
        trainer.scheduler.set_epoch(epoch, trainer.step, b.plan_steps(epoch))
        return rec
