"""DECREE (Feng et al., CVPR 2023, *Detecting Backdoors in Pre-trained Encoders*): invert the smallest trigger that
makes a suspect encoder map every shadow image to (almost) the same embedding.

The trigger is a mask ``m`` ∈ (0, 1)^{H×W}, shared by the three channels, and a pattern ``p`` ∈ (0, 1)^{3×H×W}
(the official code's (0, 255), divided by 255), both through the official tanh reparametrisation
``tanh(w) / (2 − ε) + 0.5`` of free parameters initialised from U[0, 1) by its inverse. A triggered image is
``x′ = (1 − m)⊙x + m⊙p`` in pixel space, *before* normalisation (the official code blends in [0, 255], then
normalises). The loss of a batch of shadow images is

    L = −mean_{i≠j} cos(f(x′_i), f(x′_j)) + λ · 3‖m‖₁

(the official L1 term sums the mask repeated over the three channels). Adam (β = (0.5, 0.9)); the learning rate
steps at two epoch milestones; λ starts at 1e-3, is multiplied by 5 after more than 5 consecutive steps whose
mean cosine passes the success threshold (0.99) and divided by 5 after more than 5 failing ones (not below
``lambda_min``; reset to the start value after more than 10 successes below it). The best trigger is the one of
smallest L1 among the successful steps; the inversion stops at the end of an epoch whose mean cosine passes the
threshold once the best L1 has not improved for more than ``early_stop_patience`` steps, or after ``max_epochs``.

**PL1-norm** = ‖m_best‖₁ / (H·W) ∈ [0, 1] (1 when no step succeeded); the encoder is flagged when it is below
``threshold``. The two official settings are :data:`PROFILES` (``cifar``: CIFAR / STL-10 encoders; ``clip``: the
224-px CLIP and ImageNet encoders). Official code: ``GiantSeaweed/DECREE`` ``main.py``; the deviations are listed
in ``docs/inspect.md``.

Example (a random tiny encoder: nothing collapses within a few epochs, so nothing is found)::

    >>> import torch
    >>> enc = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    >>> shadow = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    >>> r = invert_trigger(enc, shadow, DecreeParams(batch_size=8, max_epochs=2, log_every=0))
    >>> r.mask.shape, 0.0 <= float(r.mask.min()) and float(r.mask.max()) <= 1.0
    (torch.Size([8, 8]), True)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

from ..errors import ConfigError, DataError
from ..params import Params, check_positive

EPS = 1e-7  # the official epsilon() of the tanh reparametrisation

PROFILES: dict[str, dict[str, Any]] = {  # official main.py / run_decree.py, by encoder_usage_info
    "cifar": {"lr": 1e-3, "batch_size": 256, "lr_milestones": [30, 50], "lambda_min": 1e-5, "early_stop_patience": 10},
    "clip": {"lr": 0.5, "batch_size": 32, "lr_milestones": [200, 500], "lambda_min": 1e-7, "early_stop_patience": 35},
}


@dataclass
class DecreeParams(Params):
    """Hyper-parameters with the official ``cifar`` defaults (:data:`PROFILES`); ``threshold`` is the verdict's."""

    lr: float = 1e-3
    batch_size: int = 256
    lr_milestones: list[int] = field(default_factory=lambda: [30, 50])
    milestone_lrs: list[float] = field(default_factory=lambda: [0.1, 0.05])
    max_epochs: int = 1000
    success_cos: float = 0.99
    init_lambda: float = 1e-3
    lambda_factor: float = 5.0
    lambda_min: float = 1e-5
    lambda_max: float = 1e5
    patience: int = 5
    early_stop_patience: int = 10
    threshold: float = 0.1
    seed: int = 0
    log_every: int = 10  # echo one line every this many epochs (0: never)

    def __post_init__(self) -> None:
        check_positive(self, "lr", "batch_size", "max_epochs", "init_lambda", "lambda_factor", where="decree")
        if len(self.lr_milestones) != 2 or len(self.milestone_lrs) != 2:
            raise ConfigError("decree.lr_milestones and decree.milestone_lrs take two values each, e.g. [30, 50]")
        if not 0.0 < self.success_cos < 1.0:
            raise ConfigError(f"decree.success_cos={self.success_cos} must be in (0, 1)")

    @classmethod
    def for_profile(cls, profile: str, overrides: Optional[dict] = None) -> "DecreeParams":
        """The official setting ``profile`` (``cifar`` | ``clip``) with ``overrides`` (``key: value``) on top."""
        if profile not in PROFILES:
            raise ConfigError(f"unknown DECREE profile '{profile}'; choose one of: {', '.join(PROFILES)}")
        return cls.from_dict({**PROFILES[profile], **(overrides or {})}, "decree")  # type: ignore[return-value]


def mask_pattern(raw_mask: torch.Tensor, raw_pattern: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mask (H,W), pattern (3,H,W))`` in [0, 1] from the free parameters (official tanh form, then clipped)."""
    m = (torch.tanh(raw_mask) / (2 - EPS) + 0.5).clamp(0, 1)
    p = (torch.tanh(raw_pattern) / (2 - EPS) + 0.5).clamp(0, 1)
    return m, p


def stamp(images: torch.Tensor, mask: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    """``(1 − m)⊙x + m⊙p`` for float images in [0, 1] (N,3,H,W), clipped to [0, 1]."""
    m = mask.to(images.dtype)
    return ((1 - m) * images + m * pattern.to(images.dtype)).clamp(0, 1)


def mean_pairwise_cosine(z: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity over the ordered pairs i ≠ j of the rows of ``z`` (official ``compute_self_cos_sim``)."""
    zn = F.normalize(z.float(), dim=-1)
    n = zn.shape[0]
    s = zn @ zn.t()
    return (s.sum() - s.diagonal().sum()) / (n * (n - 1))


def decree_loss(embed: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, raw_mask: torch.Tensor,
                raw_pattern: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, mean cosine, L1 term)`` of one batch of float images in [0, 1]; ``embed`` normalises and encodes."""
    m, p = mask_pattern(raw_mask, raw_pattern)
    cos = mean_pairwise_cosine(embed(stamp(images, m, p)))
    reg = 3 * m.sum()  # the official L1 of the mask repeated over the three channels
    return -cos + lam * reg, cos, reg


@dataclass
class DecreeResult:
    """The inverted trigger: ``mask`` (H,W) and ``pattern`` (3,H,W) in [0, 1] (CPU, float32), its ``pl1_norm``,
    ``found`` (some step passed the cosine threshold), the verdict ``backdoored`` against ``threshold``, and the
    loss trace (one entry per epoch)."""

    pl1_norm: float
    found: bool
    backdoored: bool
    threshold: float
    mask: torch.Tensor
    pattern: torch.Tensor
    epochs: int
    steps: int
    seconds: float
    stopped: str
    trace: list[dict[str, float]]

    def summary(self) -> dict[str, Any]:
        """Everything but the tensors (what ``inspect.json`` records)."""
        return {"pl1_norm": self.pl1_norm, "found": self.found, "backdoored": self.backdoored,
                "threshold": self.threshold, "epochs": self.epochs, "steps": self.steps,
                "seconds": round(self.seconds, 2), "stopped": self.stopped, "trace": self.trace}


class _Lambda:
    """The official adaptive λ: up ×factor after > patience successes, down ÷factor after > patience failures."""

    def __init__(self, p: DecreeParams) -> None:
        self.p, self.value = p, p.init_lambda
        self.up = self.down = self.low = 0

    def update(self, success: bool) -> None:
        p = self.p
        if self.value < p.lambda_min and success:
            self.low += 1
            if self.low > 2 * p.patience:
                self.value, self.up, self.down = p.init_lambda, 0, 0
        else:
            self.low = 0
        self.up, self.down = (self.up + 1, 0) if success else (0, self.down + 1)
        if self.up > p.patience:
            if self.value < p.lambda_max:
                self.value *= p.lambda_factor
            self.up = 0
        elif self.down > p.patience:
            if self.value >= p.lambda_min:
                self.value /= p.lambda_factor
            self.down = 0


def _lr(p: DecreeParams, epoch: int) -> float:
    a, b = p.lr_milestones
    return p.lr if epoch < a else (p.milestone_lrs[0] if epoch < b else p.milestone_lrs[1])


def invert_trigger(embed: Callable[[torch.Tensor], torch.Tensor], shadow: torch.Tensor,
                   params: DecreeParams = DecreeParams(), device: Optional[torch.device] = None,
                   echo: Optional[Callable[[str], None]] = None) -> DecreeResult:
    """DECREE on ``shadow`` (uint8 (N,3,H,W), no labels) for ``embed`` (float images in [0, 1] → embeddings; an
    ``nn.Module`` is put in eval mode and its parameters are left untouched). Batched on ``device`` (default: the
    module's, else the CPU); deterministic for ``params.seed`` on a given device."""
    p = params
    if shadow.dtype != torch.uint8 or shadow.ndim != 4 or shadow.shape[1] != 3:
        raise DataError(f"shadow images must be uint8 (N,3,H,W), got {tuple(shadow.shape)} {shadow.dtype}")
    n, _, h, w = shadow.shape
    if n < 2:
        raise DataError(f"DECREE needs at least 2 shadow images (it compares their embeddings), got {n}")
    module = embed if isinstance(embed, torch.nn.Module) else None
    if device is None:
        device = next(module.parameters()).device if module is not None and any(True for _ in module.parameters()) \
            else torch.device("cpu")
    frozen = []
    if module is not None:
        was = module.training
        module.eval()
        frozen = [q for q in module.parameters() if q.requires_grad]
        for q in frozen:
            q.requires_grad_(False)
    try:
        return _run(embed, shadow.to(device), p, device, echo)
    finally:
        for q in frozen:
            q.requires_grad_(True)
        if module is not None:
            module.train(was)


def _run(embed: Callable, shadow: torch.Tensor, p: DecreeParams, device: torch.device,
         echo: Optional[Callable[[str], None]]) -> DecreeResult:
    n, _, h, w = shadow.shape
    g = torch.Generator().manual_seed(int(p.seed))
    raw_m = torch.atanh((torch.rand(h, w, generator=g, dtype=torch.float64) - 0.5) * (2 - EPS)).to(device)
    raw_p = torch.atanh((torch.rand(3, h, w, generator=g, dtype=torch.float64) - 0.5) * (2 - EPS)).to(device)
    raw_m.requires_grad_(True)
    raw_p.requires_grad_(True)
    opt = torch.optim.Adam([raw_m, raw_p], lr=p.lr, betas=(0.5, 0.9))
    lam = _Lambda(p)
    best_reg, best_m, best_p = float("inf"), None, None
    es_best, es_count, steps, trace, stopped = float("inf"), 0, 0, [], "max_epochs"
    t0 = time.time()
    epoch = 0
    for epoch in range(p.max_epochs):
        for group in opt.param_groups:
            group["lr"] = _lr(p, epoch)
        order = torch.randperm(n, generator=g).to(device)
        sums = torch.zeros(3, dtype=torch.float64)
        batches = 0
        for s in range(0, n, p.batch_size):
            x = shadow[order[s:s + p.batch_size]].float().div_(255)
            with torch.no_grad():  # the trigger this step evaluates (the official code keeps it, not the updated one)
                m_now, p_now = mask_pattern(raw_m, raw_p)
            loss, cos, reg = decree_loss(embed, x, raw_m, raw_p, lam.value)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            c, r = float(cos.detach()), float(reg.detach())  # one host sync per step: the λ schedule decides on the host
            sums += torch.tensor([float(loss.detach()), c, r], dtype=torch.float64)
            batches += 1
            steps += 1
            success = c > p.success_cos
            if success and r < best_reg:
                best_reg, best_m, best_p = r, m_now.detach().clone(), p_now.detach().clone()
            if best_m is not None:
                es_count = es_count + 1 if best_reg >= es_best else 0
            es_best = min(es_best, best_reg)
            lam.update(success)
        mean_loss, mean_cos, mean_reg = (sums / batches).tolist()
        pl1 = best_reg / (3 * h * w) if best_m is not None else 1.0
        trace.append({"epoch": epoch + 1, "loss": round(mean_loss, 6), "cos": round(mean_cos, 6),
                      "pl1": round(mean_reg / (3 * h * w), 6), "best_pl1": round(pl1, 6),
                      "lambda": lam.value, "lr": _lr(p, epoch)})
        if echo is not None and p.log_every and ((epoch + 1) % p.log_every == 0 or epoch == 0):
            echo(f"decree epoch {epoch + 1}: loss {mean_loss:.4f}, cos {mean_cos:.4f}, mask L1 "
                 f"{mean_reg / (3 * h * w):.4f}, best PL1 {pl1:.4f}, lambda {lam.value:.2g} ({time.time() - t0:.0f} s)")
        if mean_cos > p.success_cos and es_count > p.early_stop_patience:
            stopped = "early_stop"
            break
    found = best_m is not None
    pl1 = best_reg / (3 * h * w) if found else 1.0
    if not found:  # nothing passed the threshold: report the last trigger
        best_m, best_p = mask_pattern(raw_m.detach(), raw_p.detach())
    return DecreeResult(pl1_norm=float(pl1), found=found, backdoored=bool(found and pl1 < p.threshold),
                        threshold=p.threshold, mask=best_m.float().cpu(), pattern=best_p.float().cpu(),
                        epochs=epoch + 1, steps=steps, seconds=time.time() - t0, stopped=stopped, trace=trace)
