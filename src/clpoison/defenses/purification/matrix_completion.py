"""Matrix-completion purification — the countermeasure proposed with Contrastive Poisoning (He, Zha, Katabi,
"Indiscriminate Poisoning Attacks on Unsupervised Contrastive Learning", ICLR 2023, arXiv 2202.11202, §"defense";
dossier ``algorithms.md`` §4.6), which is the ME-Net preprocessing (Yang, Zhang, Katabi, Xu, "ME-Net: Towards
Effective Adversarial Robustness with Matrix Estimation", ICML 2019; official code ``YyzHarry/ME-Net``
``train_pure.py::usvt``/``softimp``/``menet``).

Every training image is randomly masked and rebuilt by low-rank matrix estimation; the low-rank estimate keeps the
global structure and drops the high-frequency, sample-specific poison. Then contrastive training runs as usual on
the rebuilt images. Per image (ME-Net ``--me-channel concat``, the default):

1. scale to [-1, 1] (``x·2/255 − 1``) and put R, G, B side by side: an h × 3w matrix;
2. draw a Bernoulli(p) keep-mask over the whole h × 3w matrix (so each channel gets its own mask) and note the
   observed fraction p_obs = mean(mask);
3. ``usvt`` (default): SVD of (matrix ⊙ mask), keep the top ``int(svd_prob·h)`` singular values, divide by p_obs;
   ``soft_impute``: iterative singular-value soft-thresholding (Mazumder, Hastie, Tibshirani 2010) with the
   fancyimpute ``SoftImpute`` defaults ME-Net used (zero fill, shrinkage = largest singular value / 50, at most 100
   iterations, stop when the missing entries move by < 0.001 relative), observed entries kept as they were;
4. clip to [-1, 1] and map back to uint8.

Defaults and sources: p in [p_min, p_max] = [0.8, 1.0] (ME-Net ``--startp``/``--endp``), ``svd_prob`` 0.8
(``--svdprob``), method ``usvt`` (``--me-type``). **The values the CP paper itself used were not verified** (they are
not in the CP repository); these are ME-Net's defaults, as the dossier recommends.

Deviations from ME-Net, chosen deliberately:

* **One copy, p drawn per image.** ME-Net trains on ``--mask-num`` = 10 masked copies of the training set, copy k
  (1..10) using the fixed p = startp + k·(endp − startp)/10 (0.82, 0.84, …, 1.0) for all its images. The default here
  keeps the training-set size (one copy, ``copies: 1``) and draws p ~ U[p_min, p_max] per image, which spreads p over
  the same range. ``copies: 10, p_sampling: ladder`` reproduces ME-Net exactly (copy-major order, like ME-Net;
  image i of copy c lands at c·N + i).
* Rounded to the nearest level on the way back to uint8 (ME-Net's assignment into a uint8 array truncates, a
  −0.5-level bias); float32 by default (ME-Net: float64; ``dtype: float64`` restores it — the difference is far below
  one level); the rank is capped to min(h, 3w) and floored at 1; the soft-impute shrinkage uses the exact largest
  singular value (fancyimpute: a randomized estimate). Nuclear-norm minimisation (``nucnorm``, cvxpy) is not offered.
* Images on a padded canvas (``sizes``) are rebuilt on their valid area only (h × 3w of that area); the padding is
  copied unchanged. Only the training split is purified (ME-Net also masks its test set at p = 0.9; the CP victim's
  linear probe uses clean data).

Randomness: image i of copy c gets its own ``torch.Generator`` seeded from a local generator seeded with
``context.seed``; masks are drawn on the CPU, so the output depends neither on ``batch_size`` nor on the device
(up to float rounding) and the global RNG is never touched. The SVDs run batched (``torch.linalg.svd`` on a
(B, h, 3w) batch of at most ``batch_size`` images) on ``device`` (``auto``: the run's training device, else CUDA when available).

Example::

    >>> import torch
    >>> from clpoison.data.datasets import ImageDataset
    >>> imgs = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    >>> ds = ImageDataset(imgs, torch.tensor([0, 1, 0, 1]), ["cat", "dog"])
    >>> out, info = MatrixCompletion(MatrixCompletionParams(device="cpu")).filter(ds, FilterContext(seed=0))
    >>> out.images.shape, out.images.dtype, bool(torch.equal(out.labels, ds.labels)), info["rank"]
    (torch.Size([4, 3, 8, 8]), torch.uint8, True, {'8x8': 6})

From the command line (any image preset)::

    clpoison run simclr-small.yaml defense.name=matrix-completion defense.params.svd_prob=0.8 --out runs/mc
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from ...contexts import FilterContext
from ...data.datasets import concat_datasets
from ...errors import ConfigError
from ..base import DEFENSES, Defense, DefenseParams
from .purify import check_choice, check_device, check_number, map_images, require_image_dataset, resolve_device

METHODS = ("usvt", "soft_impute")
_F32_EPS = float(torch.finfo(torch.float32).eps)


@dataclass
class MatrixCompletionParams(DefenseParams):
    method: str = "usvt"  # ME-Net --me-type usvt; soft_impute = ME-Net softimp (fancyimpute SoftImpute)
    p_min: float = 0.8  # lowest keep probability of the pixel mask (ME-Net --startp 0.8)
    p_max: float = 1.0  # highest keep probability (ME-Net --endp 1.0)
    p_sampling: str = "uniform"  # uniform: p ~ U[p_min, p_max] per image; ladder: copy k of K: p_min + k(p_max-p_min)/K
    copies: int = 1  # masked copies of the training set (ME-Net --mask-num 10; 1 keeps the set's size)
    svd_prob: float = 0.8  # USVT keeps the top int(svd_prob * h) singular values (ME-Net --svdprob 0.8)
    soft_impute_iters: int = 100  # fancyimpute SoftImpute max_iters
    soft_impute_tol: float = 0.001  # fancyimpute convergence_threshold
    soft_impute_shrink: float = 0.02  # shrinkage = this x largest singular value (fancyimpute: 1/50)
    batch_size: int = 512  # images per batched SVD (bounds memory)
    device: str = "auto"  # auto (the training device) | cpu | cuda | cuda:N
    dtype: str = "float32"  # float32 | float64 (ME-Net computes in float64)

    def __post_init__(self) -> None:
        check_choice("method", self.method, METHODS)
        check_number("p_min", self.p_min, 0.0, 1.0, lo_open=True, hint="a keep probability (ME-Net uses 0.8)")
        check_number("p_max", self.p_max, 0.0, 1.0, lo_open=True, hint="a keep probability (ME-Net uses 1.0)")
        if self.p_min > self.p_max:
            raise ConfigError(f"defense.params.p_min={self.p_min} must be <= defense.params.p_max={self.p_max}")
        check_choice("p_sampling", self.p_sampling, ("uniform", "ladder"))
        check_number("copies", self.copies, 1, integer=True, hint="ME-Net uses 10, 1 keeps the set's size")
        check_number("svd_prob", self.svd_prob, 0.0, 1.0, lo_open=True, hint="ME-Net uses 0.8")
        check_number("soft_impute_iters", self.soft_impute_iters, 1, integer=True, hint="fancyimpute uses 100")
        check_number("soft_impute_tol", self.soft_impute_tol, 0.0, lo_open=True, hint="fancyimpute uses 0.001")
        check_number("soft_impute_shrink", self.soft_impute_shrink, 0.0, hint="fancyimpute uses 0.02 (1/50)")
        check_number("batch_size", self.batch_size, 1, integer=True)
        check_device("device", self.device)
        check_choice("dtype", self.dtype, ("float32", "float64"))


# --------------------------------------------------------------------------------------------------------------
# matrix estimation on (B, m, n) batches


def usvt(matrix: torch.Tensor, mask: torch.Tensor, rank: int) -> torch.Tensor:
    """USVT as in ME-Net: top-``rank`` SVD of ``matrix ⊙ mask`` divided by each matrix's observed fraction.

    ``matrix`` (B,m,n) float, ``mask`` (B,m,n) bool/0-1; returns (B,m,n), not clipped.
    """
    maskf = mask.to(matrix.dtype)
    p_obs = maskf.mean(dim=(-2, -1)).clamp_min(torch.finfo(matrix.dtype).tiny)
    u, s, vh = torch.linalg.svd(matrix * maskf, full_matrices=False)
    k = max(1, min(int(rank), s.shape[-1]))
    low = (u[..., :k] * s[..., None, :k]) @ vh[..., :k, :]
    return low / p_obs[:, None, None]


def soft_impute(matrix: torch.Tensor, mask: torch.Tensor, shrink: float = 0.02, max_iters: int = 100,
                tol: float = 0.001) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft-Impute (fancyimpute semantics, batched): missing entries start at 0 and are replaced, each iteration, by
    the SVD reconstruction with singular values shrunk by ``shrink``·σ_max(zero-filled matrix); a matrix stops once
    its missing entries move by less than ``tol`` relative to their norm. Observed entries are returned unchanged.

    Returns ``(completed (B,m,n), iterations (B,))``; matrices without missing entries take 0 iterations.
    """
    miss = ~mask.bool()
    x = torch.where(miss, torch.zeros((), dtype=matrix.dtype, device=matrix.device), matrix)
    lam = torch.linalg.svdvals(x)[:, 0] * float(shrink) if len(x) else x.new_zeros(0)
    iters = torch.zeros(len(x), dtype=torch.int64)
    active = miss.flatten(1).any(dim=1)
    for _ in range(int(max_iters)):
        idx = torch.nonzero(active).flatten()
        if not len(idx):
            break
        old, m = x[idx], miss[idx]
        u, s, vh = torch.linalg.svd(old, full_matrices=False)
        rec = (u * (s - lam[idx, None]).clamp_min(0)[:, None, :]) @ vh
        diff = ((old - rec) * m).square().sum(dim=(-2, -1)).sqrt()
        old_norm = (old * m).square().sum(dim=(-2, -1)).sqrt()
        edge = (old_norm == 0) | ((old_norm < _F32_EPS) & (diff > _F32_EPS))
        converged = ~edge & (diff / old_norm.clamp_min(torch.finfo(x.dtype).tiny) < tol)
        x[idx] = torch.where(m, rec, old)
        iters[idx.cpu()] += 1
        active[idx[converged]] = False
    return x, iters


def to_matrix(images: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """uint8 (B,3,h,w) → (B, h, 3w) in [-1, 1], channels side by side (R | G | B)."""
    x = images.to(device=device, dtype=dtype) * (2.0 / 255.0) - 1.0
    return torch.cat([x[:, 0], x[:, 1], x[:, 2]], dim=-1)


def from_matrix(matrix: torch.Tensor, width: int) -> torch.Tensor:
    """(B, h, 3w) estimate → clipped to [-1, 1] → uint8 (B,3,h,w), rounded to the nearest level, on the CPU."""
    w = matrix.clamp(-1.0, 1.0)
    w = torch.stack([w[..., c * width : (c + 1) * width] for c in range(3)], dim=1)
    return ((w + 1.0) * (255.0 / 2.0)).round().clamp(0, 255).to(torch.uint8).cpu()


def draw_masks(seeds: torch.Tensor, shape: tuple[int, int], p_min: float, p_max: float,
               p_fixed: Optional[float] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One Bernoulli(p) keep-mask of ``shape`` per seed, on the CPU; p is ``p_fixed`` or U[p_min, p_max] per image.

    Returns ``(masks (B,*shape) bool, p (B,) float64)``.
    """
    g = torch.Generator()
    masks = torch.empty(len(seeds), *shape, dtype=torch.bool)
    ps = torch.empty(len(seeds), dtype=torch.float64)
    for j, s in enumerate(seeds.tolist()):
        g.manual_seed(int(s))
        u = float(torch.rand((), generator=g, dtype=torch.float64))
        p = p_fixed if p_fixed is not None else p_min + (p_max - p_min) * u
        masks[j] = torch.rand(shape, generator=g) < p
        ps[j] = p
    return masks, ps


def rank_for(h: int, w: int, svd_prob: float) -> int:
    """ME-Net's ``int(svd_prob * h)`` singular values, capped to min(h, 3w) and at least 1."""
    return max(1, min(int(svd_prob * h), h, 3 * w))


# --------------------------------------------------------------------------------------------------------------
# the defense


@DEFENSES.register("matrix-completion")
class MatrixCompletion(Defense):
    """ME-Net pixel dropout + low-rank reconstruction of every training image (a data-level defense)."""

    name = "matrix-completion"
    modality = "image"
    Params = MatrixCompletionParams

    def filter(self, train: Any, context: FilterContext) -> tuple[Any, dict[str, Any]]:
        p = self.params
        what = "defense matrix-completion"
        ds = require_image_dataset(train, what)
        device = resolve_device(p.device, context, what)
        dtype = torch.float64 if p.dtype == "float64" else torch.float32
        seed = int(context.seed or 0)
        base = torch.Generator().manual_seed(seed)
        seeds = torch.randint(0, 2**62, (p.copies, len(ds)), generator=base)
        acc = {"observed": 0.0, "p": 0.0, "n": 0, "iters": 0}
        ranks: dict[str, int] = {}

        def rebuild(copy: int):
            p_fixed = (p.p_min + (copy + 1) * (p.p_max - p.p_min) / p.copies) if p.p_sampling == "ladder" else None

            def fn(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
                b, _, h, w = x.shape
                mask, ps = draw_masks(seeds[copy, index], (h, 3 * w), p.p_min, p.p_max, p_fixed)
                m = to_matrix(x, dtype, device)
                mask = mask.to(device)
                if p.method == "usvt":
                    k = rank_for(h, w, p.svd_prob)
                    ranks[f"{h}x{w}"] = k
                    est = usvt(m, mask, k)
                else:
                    est, it = soft_impute(m, mask, p.soft_impute_shrink, p.soft_impute_iters, p.soft_impute_tol)
                    acc["iters"] += int(it.sum())
                acc["observed"] += float(mask.flatten(1).float().mean(1).sum())
                acc["p"] += float(ps.sum())
                acc["n"] += b
                return from_matrix(est, w)

            return fn

        parts, seconds, change = [], 0.0, 0.0
        for c in range(p.copies):
            out, stats = map_images(ds, rebuild(c), p.batch_size, what)
            parts.append(out)
            seconds += stats["seconds"]
            change += stats["mean_abs_change"]
        result = parts[0] if p.copies == 1 else concat_datasets(parts, ds.name)
        n = max(acc["n"], 1)
        info: dict[str, Any] = {
            "method": p.method, "p_min": p.p_min, "p_max": p.p_max, "p_sampling": p.p_sampling, "copies": p.copies,
            "device": str(device), "dtype": p.dtype, "seed": seed,
            "images_in": len(ds), "images_out": len(result), "seconds": round(seconds, 3),
            "mean_abs_change": round(change / p.copies, 4),
            "mean_keep_p": round(acc["p"] / n, 4), "mean_observed": round(acc["observed"] / n, 4),
        }
        if p.method == "usvt":
            info.update(svd_prob=p.svd_prob, rank=dict(sorted(ranks.items())))
        else:
            info.update(soft_impute_shrink=p.soft_impute_shrink, soft_impute_tol=p.soft_impute_tol,
                        soft_impute_iters=p.soft_impute_iters, mean_iterations=round(acc["iters"] / n, 2))
        return result, info
