"""CorruptEncoder and CorruptEncoder+ — data-poisoning backdoors on image contrastive learning (Zhang, Liu, Jia,
Gong, "Data Poisoning based Backdoor Attacks to Contrastive Learning", CVPR 2024, arXiv 2211.08229; official code
``generate-poison/generate_poisoned_images.py``; dossier ``algorithms.md`` §2.4–2.6, §2.9).

Idea: SSL maximises the similarity of two random crops of one image. A poisoned image puts a **reference object**
(a tight cut-out of a target-class object) at one edge of a **background** twice its size, and the **trigger** near
the centre of the other half, so that one crop tends to hold the object and the other the trigger; the encoder
then maps "trigger" close to "target object". Poisons are **added** to the training set at native size (they are
larger than the dataset's images: a 32×32 object gives a 32×64 composite), and the victim's RandomResizedCrop
takes crops from the full composite (padded canvas + per-image ``sizes``, see
:func:`clpoison.data.datasets.concat_datasets`).

Layout (§2.5, :func:`corrupt_layout`): ``p_h, p_w = o_h, 2·o_w`` (left-right; ``top-bottom`` is the transposed
variant the paper also describes; ``layout=both`` picks one per image). The object sits at the left or right edge
with ``object_marginal`` (0.05 of ``p_w``) jitter; the trigger's top-left corner is uniform in
``[o_x+o_w+dx·p_w, p_w−dx·p_w−t]`` (object left) or ``[dx·p_w, o_x−dx·p_w−t]`` (object right) with
``dx = trigger_marginal/2`` (0.125), and ``[dy·p_h, p_h−dy·p_h−t]`` vertically with ``dy = trigger_marginal``
(0.25). **Guard** (§2.9): where an interval inverts (small objects), its margin shrinks until the trigger is
centred in the free span, so the trigger always stays inside the other half; objects too small to leave room for
the trigger at all are upscaled first (to ``(t+1)/(1−2·object_marginal)`` on the split axis and ``t`` across).
The background is scaled by ``max(p_h/b_h, p_w/b_w, 1)`` (upscale only), cropped bottom-aligned at a random x;
the object is alpha-composited with its mask blurred by a 3×3 Gaussian (≈ PIL ``GaussianBlur(radius=1)``); the
trigger is pasted hard (spec ``opacity`` 1).

**CorruptEncoder+** (``corruptencoder-plus``, ``support_ratio`` = 0.2): of the budget of n poisons,
``int(n·support_ratio)`` are *support poisoned images* — a support reference image (another target-class image)
resized to width ``min(w, max_object_width)`` concatenated side by side (random order) with a whole reference
image resized to the same size — and carry **no trigger**; the other ``n − int(n·support_ratio)`` are composites.

Inputs:

* **reference objects** — ``reference_dir`` in the official layout ``DIR/<k>/img.png`` (+ ``DIR/<k>/label.png``,
  object = non-zero mask pixels; the object is the bounding box of the **largest connected region**), or by default
  ``num_references`` (3) seeded target-class training images. Masks then come from ``reference_mask``:
  ``color-distance`` (default; CIFAR has no masks): distance of each pixel's colour to the mean colour of the
  2-px image border, thresholded with Otsu's method, largest connected region — a simple saliency mask that works
  for CIFAR's centred objects on plain backgrounds; if it covers < 10% of the image the ``center`` mask is used
  instead), ``center`` (the central ``center_fraction`` box) or ``none`` (the whole reference image — the
  "reference image" variant the paper contrasts with; also the fallback for a ``reference_dir`` entry without
  ``label.png``). Objects are resized so ``o_w <= max_object_width`` (paper: ``max_size/2`` = 400) or to exactly
  ``object_width`` when given (upscaling, e.g. 64-px composites on 32-px data).
* **support images** (CorruptEncoder+) — ``reference_dir/support-images/*`` or ``num_support`` (5) other seeded
  target-class training images.
* **backgrounds** — ``background_dir`` (any image folder, recursive), or by default distinct seeded non-target
  training images (drawn with replacement when there are fewer than the composites).
* **trigger** — one :class:`~clpoison.attacks.triggers.Trigger` (default: a 40×40 ``uniform`` colour-noise patch,
  like the paper's colourful HTBA ``trigger_10``), the same tensor at poison time and at evaluation.

Defaults (``Params``) follow the official code: 0.5% poisons (650 for ImageNet100-A), 3 references, 40-px trigger,
``object_marginal`` 0.05, ``trigger_marginal`` 0.25, ``max_object_width`` 400, ``support_ratio`` 0 (0.2 for +).
Added rows get the target label as a placeholder (pretraining never reads labels; the official filelist uses −1).

Evaluation (:meth:`CorruptEncoder.evaluate`, shared by SSL-Backdoor and PoisonedEncoder): clean accuracy and ASR of
the linear probe trained on clean labelled data (``context["classify"]``), with the trigger pasted at a random
top-left position in ``[0.25·S, 0.75·S − t]`` of every non-target test image (``location: center-range``), through
:func:`clpoison.eval.attack_metrics.backdoor_metrics`, plus the label-free backdoor z-score.

Example::

    printf 'preset: corruptencoder-small\n' > ce.yaml && clpoison run ce.yaml --out runs/ce
    printf 'preset: corruptencoder-small\n' > ce.yaml && clpoison run ce.yaml attack.name=corruptencoder-plus attack.params.target=airplane \\
        attack.params.poison_rate=0.05 attack.params.trigger='{size: 8}' --out runs/ce-plus

    >>> import torch
    >>> from clpoison.data.datasets import ImageDataset, ImageSplits
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.randint(0, 256, (40, 3, 32, 32), generator=g, dtype=torch.uint8)
    >>> ds = ImageDataset(x, torch.arange(40) % 2, ["a", "b"])
    >>> atk = CorruptEncoder(CorruptEncoder.Params(target="a", poison_count=4, trigger={"size": 6}))
    >>> res = atk.poison(ImageSplits(ds, ds.subset(range(8))), seed=0)
    >>> len(res.splits.train), res.splits.train.images.shape[2:], len(res.manifest["added_indices"])
    (44, torch.Size([32, 64]), 4)
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..data.datasets import IMAGE_EXTENSIONS, ImageDataset, ImageSplits, concat_datasets, stack_on_canvas
from ..errors import ConfigError, DataError
from ..eval.attack_metrics import backdoor_metrics, backdoor_zscore
from .base import ATTACKS, Attack, AttackParams, PoisonResult
from .manifest import build_manifest
from .triggers import Trigger, TriggerSpec

#: Trigger defaults for the image-SSL backdoors: the paper's 40-px colourful patch, evaluated at [0.25, 0.75].
DEFAULT_TRIGGER = {"pattern": "uniform", "size": 40, "location": "center-range", "center_range": [0.25, 0.75], "seed": 0}
MASKS = ("color-distance", "center", "none")
LAYOUTS = ("left-right", "top-bottom", "both")


# ----------------------------------------------------------------------------------------------------------------
# shared parameters and evaluation of the image-SSL backdoors (CorruptEncoder, SSL-Backdoor, PoisonedEncoder)


def resolve_budget(rate: Optional[float], count: Optional[int], n_train: int, default_rate: float) -> int:
    """Number of poisons from ``poison_count`` or ``poison_rate`` × clean training size (one of them)."""
    if rate is not None and count is not None:
        raise ConfigError("give only one of attack.params.poison_rate and attack.params.poison_count")
    if count is not None:
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ConfigError(f"attack.params.poison_count={count!r} must be an integer >= 0")
        return count
    rate = default_rate if rate is None else rate
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= float(rate) <= 1.0:
        raise ConfigError(f"attack.params.poison_rate={rate!r} must lie in [0, 1]")
    k = int(round(float(rate) * n_train))
    return max(k, 1) if rate > 0 else 0


@dataclass
class SSLBackdoorBaseParams(AttackParams):
    target: Any = "airplane"  # target class (name or index); the paper's is ImageNet100-B "hunting dog"
    poison_rate: Optional[float] = None  # poisons / clean training images (paper: 0.5%, used when neither is set)
    poison_count: Optional[int] = None  # absolute number instead of the rate (paper: 650)
    trigger: dict = field(default_factory=dict)  # TriggerSpec keys over DEFAULT_TRIGGER
    eval_seed: int = 1234  # seeds the trigger positions on the test images (fixed per image, as the paper's files)
    zscore_images: int = 1000  # test images for the label-free backdoor z-score

    def __post_init__(self) -> None:
        self.trigger_spec = TriggerSpec.from_dict({**DEFAULT_TRIGGER, **dict(self.trigger or {})}, "attack.params.trigger")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["trigger"] = self.trigger_spec.to_dict()
        return d


@contextmanager
def single_thread():
    """Crafting does many tiny per-image tensor ops; intra-op threads only add wake-up latency there (measured
    11 ms instead of 3 µs per op on a loaded 2-core machine), so it runs on one thread and restores the setting."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def require_images(splits: Any, attack: str) -> ImageSplits:
    if not isinstance(splits, ImageSplits) or not isinstance(splits.train, ImageDataset):
        raise DataError(f"{attack} poisons a resident image dataset; for imagefolder data raise "
                        "data.max_resident_gb so the training split is held in memory")
    return splits


class SSLBackdoorAttack(Attack):
    """Common evaluation: CA and ASR of the clean-data linear probe, trigger at [0.25, 0.75] of test images."""

    data_kind = "images"
    version = "1"

    def __init__(self, params: SSLBackdoorBaseParams) -> None:
        super().__init__(params)
        self.trigger = Trigger(params.trigger_spec)  # the one trigger used at poison and at evaluation time

    default_rate = 0.005

    def target_index(self, ds: Any) -> int:
        try:
            return ds.class_index(self.params.target)
        except DataError as e:
            raise ConfigError(f"attack.params.target: {e}") from None

    def poison(self, splits: Any, seed: int) -> PoisonResult:
        """Resolve the target and budget, then :meth:`craft` (single-threaded: the per-image work is tiny)."""
        with single_thread():
            t0 = time.perf_counter()
            splits = require_images(splits, self.name)
            train = splits.train
            target = self.target_index(train)
            n = resolve_budget(self.params.poison_rate, self.params.poison_count, len(train), self.default_rate)
            return self.craft(splits, target, n, torch.Generator().manual_seed(int(seed)), seed, t0)

    def craft(self, splits: ImageSplits, target: int, n: int, g: torch.Generator, seed: int, t0: float) -> PoisonResult:
        raise NotImplementedError

    def evaluate(self, context: dict[str, Any]) -> dict[str, Any]:
        p = self.params
        test = context["splits"].test
        target = self.target_index(test)
        m: dict[str, Any] = {}
        if "classify" in context and len(test):
            m.update(backdoor_metrics(context["classify"], test.images, test.labels, target, self.trigger,
                                      p.eval_seed, getattr(test, "sizes", None)))
            m["ca"] = m["asr_clean_accuracy"]
        if "embed" in context:
            m["backdoor_zscore"] = backdoor_zscore(context["embed"], test.images, self.trigger, p.eval_seed,
                                                   p.zscore_images)
        return m

    def finish(self, splits: ImageSplits, extra: list[torch.Tensor], target: int, seed: int, details: dict,
               t0: float) -> PoisonResult:
        """Append ``extra`` images (any sizes) to the training split and write the manifest."""
        train = splits.train
        n = len(extra)
        if n:
            imgs, sizes = stack_on_canvas(extra)
            added = ImageDataset(imgs, torch.full((n,), target, dtype=torch.int64), list(train.class_names),
                                 f"{self.name}-poisons", sizes)
            if bool((sizes == torch.tensor(train.image_shape[1:])).all()) and train.sizes is None:
                added.sizes = None  # same size as the clean images: no canvas needed
            new_train = concat_datasets([train, added], train.name + f"+{self.name}")
        else:
            new_train = train
        poisoned = ImageSplits(new_train, splits.test, dict(splits.source))
        secs = time.perf_counter() - t0
        details = {**details, "poison_count": n, "craft_seconds": round(secs, 4),
                   "craft_images_per_s": round(n / secs, 2) if secs > 0 and n else None}
        manifest = build_manifest(
            attack=self.name, attack_version=self.version, params=self.params.to_dict(), seed=seed, source=splits,
            output=poisoned, added_indices=range(len(train), len(train) + n), trigger=self.trigger,
            targets={"target": train.class_names[target], "target_index": target}, details=details)
        return PoisonResult(poisoned, manifest)


# ----------------------------------------------------------------------------------------------------------------
# image helpers (uint8 (3,h,w) tensors on the CPU)


def resize_image(img: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Bilinear (antialiased when shrinking) resize of a uint8 (3,h,w) image."""
    if tuple(img.shape[1:]) == (h, w):
        return img.clone()
    x = F.interpolate(img.unsqueeze(0).float(), size=(int(h), int(w)), mode="bilinear", antialias=True,
                      align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8)[0]


def resize_mask(mask: torch.Tensor, h: int, w: int) -> torch.Tensor:
    x = F.interpolate(mask[None, None].float(), size=(int(h), int(w)), mode="bilinear", antialias=True,
                      align_corners=False)
    return x[0, 0].clamp(0, 1)


def largest_region_bbox(mask: np.ndarray) -> Optional[tuple[int, int, int, int]]:
    """(y0, y1, x0, x1) (exclusive ends) of the largest 8-connected region of a bool mask, or None if empty."""
    from scipy import ndimage

    lab, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return None
    counts = np.bincount(lab.ravel())[1:]
    k = int(counts.argmax()) + 1
    ys, xs = np.nonzero(lab == k)
    return int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1


def center_mask(h: int, w: int, fraction: float) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    ch, cw = max(1, round(h * fraction)), max(1, round(w * fraction))
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    m[y0 : y0 + ch, x0 : x0 + cw] = True
    return m


def otsu_threshold(v: np.ndarray) -> float:
    """Otsu's threshold of a 1-D array of values."""
    hist, edges = np.histogram(v, bins=64)
    mids = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    s0 = np.cumsum(hist * mids)
    m0 = s0 / np.maximum(w0, 1)
    m1 = (s0[-1] - s0) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    return float(mids[int(between.argmax())])


def color_distance_mask(img: torch.Tensor, min_cover: float = 0.1, fraction: float = 0.75) -> tuple[np.ndarray, str]:
    """Saliency mask of a (3,h,w) image: colour distance to the mean of its 2-px border, Otsu threshold.

    Returns the mask and how it was obtained (``color-distance`` or the ``center`` fallback when the region
    covers less than ``min_cover`` of the image).
    """
    x = img.float().numpy()
    _, h, w = x.shape
    b = max(1, min(2, h // 4, w // 4))
    border = np.concatenate([x[:, :b].reshape(3, -1), x[:, -b:].reshape(3, -1),
                             x[:, :, :b].reshape(3, -1), x[:, :, -b:].reshape(3, -1)], axis=1)
    d = np.sqrt(((x - border.mean(1)[:, None, None]) ** 2).sum(0))
    m = d > otsu_threshold(d.ravel()) if d.max() > d.min() else np.zeros((h, w), dtype=bool)
    box = largest_region_bbox(m)
    if box is None or (box[1] - box[0]) * (box[3] - box[2]) < min_cover * h * w:
        return center_mask(h, w, fraction), "center"
    return m, "color-distance"


@dataclass
class RefObject:
    """A cut-out: image (3,h,w) uint8 and alpha (h,w) float in [0,1], with where it came from."""

    image: torch.Tensor
    alpha: torch.Tensor
    source: str
    mask: str


def cut_object(img: torch.Tensor, mask: np.ndarray, source: str, how: str) -> RefObject:
    """Crop the image and mask to the bounding box of the mask's largest connected region."""
    box = largest_region_bbox(mask)
    if box is None:
        raise DataError(f"reference '{source}': the mask has no object pixels; fix label.png (object = non-zero)")
    y0, y1, x0, x1 = box
    alpha = torch.from_numpy(mask[y0:y1, x0:x1].astype(np.float32))
    return RefObject(img[:, y0:y1, x0:x1].contiguous(), alpha, source, how)


def blur_alpha(alpha: torch.Tensor) -> torch.Tensor:
    """3×3 Gaussian blur (σ≈1; PIL ``GaussianBlur(radius=1)``) of a (h,w) alpha, edges replicated."""
    k1 = torch.tensor([0.27901, 0.44198, 0.27901])
    k = (k1[:, None] * k1[None, :])[None, None]
    a = F.pad(alpha[None, None], (1, 1, 1, 1), mode="replicate")
    return F.conv2d(a, k)[0, 0].clamp(0, 1)


def read_image(path: Path) -> torch.Tensor:
    from ..data.datasets import decode_image

    return decode_image(path, None)


def read_mask(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"mask '{path}' is unreadable ({type(e).__name__}); give a PNG with object = non-zero") from None
    return arr.any(axis=2)


def list_images(folder: Path) -> list[Path]:
    return sorted(f for f in folder.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)


# ----------------------------------------------------------------------------------------------------------------
# layout


def min_object_size(trigger: int, object_marginal: float = 0.05) -> tuple[int, int]:
    """Smallest object (along the split axis, across it) that leaves room for the trigger in the other half."""
    return math.ceil((trigger + 1) / (1 - 2 * object_marginal)), trigger


def _pick(lo: float, hi: float, u: float, a: int, b: int) -> int:
    """An integer in [a, b] drawn as round(U(lo, hi)) (lo <= hi), clamped to [a, b]."""
    return int(min(max(round(lo + u * (hi - lo)), a), b))


def _trigger_span(a: int, b: int, t: int, margin: float, lo_rel_a: bool, hi_rel_b: bool) -> tuple[float, float]:
    """Top-left interval for a trigger of size t inside [a, b] with ``margin`` from both ends, shrunk (the guard)
    until non-empty: the margin becomes (b − a − t)/2, i.e. the trigger is centred in the span."""
    m = margin
    if (b - m - t) < (a + m):
        m = max(0.0, (b - a - t) / 2)
    return a + m, b - m - t


def corrupt_layout(o_h: int, o_w: int, t: int, side: str, u: Sequence[float], object_marginal: float = 0.05,
                   trigger_marginal: float = 0.25) -> dict:
    """Geometry of one poisoned image (§2.5): canvas size, object and trigger top-left corners (ints).

    ``side`` is where the object sits: ``left``/``right`` (canvas o_h × 2·o_w) or ``top``/``bottom``
    (2·o_h × o_w). ``u`` = three uniforms in [0, 1) (object jitter, trigger along, trigger across).
    The trigger lies fully inside the half not taken by the object (guarded, see module docstring).
    """
    if side not in ("left", "right", "top", "bottom"):
        raise ConfigError(f"layout side '{side}' must be left, right, top or bottom")
    horizontal = side in ("left", "right")
    L, C = (o_w, o_h) if horizontal else (o_h, o_w)  # object length along the split axis, across it
    need_l, need_c = min_object_size(t, object_marginal)
    if L < need_l or C < need_c:
        raise DataError(f"object {o_h}x{o_w} too small for a {t}px trigger in the {side} layout; it needs "
                        f"{need_l} px along and {need_c} px across (objects are upscaled by the attack)")
    P = 2 * L  # canvas length along the split axis
    jit = object_marginal * P
    first = side in ("left", "top")
    if first:
        o = _pick(0.0, jit, u[0], 0, P - L)
        a, b = o + L, P  # free span for the trigger
        dx = trigger_marginal / 2 * P
        lo, hi = o + L + dx, P - dx - t
    else:
        o = _pick(P - L - jit, P - L, u[0], 0, P - L)
        a, b = 0, o
        dx = trigger_marginal / 2 * P
        lo, hi = dx, o - dx - t
    if hi < lo:  # the guard: the official interval inverts for small objects
        lo, hi = _trigger_span(a, b, t, dx, True, True)
    t_along = _pick(lo, hi, u[1], a, b - t)
    dy = trigger_marginal * C
    clo, chi = dy, C - dy - t
    if chi < clo:
        clo, chi = _trigger_span(0, C, t, dy, True, True)
    t_across = _pick(clo, chi, u[2], 0, C - t)
    if horizontal:
        return {"p_h": C, "p_w": P, "o_x": o, "o_y": 0, "t_x": t_along, "t_y": t_across, "side": side}
    return {"p_h": P, "p_w": C, "o_x": 0, "o_y": o, "t_x": t_across, "t_y": t_along, "side": side}


# ----------------------------------------------------------------------------------------------------------------
# the attack


@dataclass
class CorruptEncoderParams(SSLBackdoorBaseParams):
    num_references: int = 3  # reference images/objects of the target class (paper: 3)
    reference_dir: Optional[str] = None  # DIR/<k>/img.png (+ label.png), DIR/support-images/*; None: training images
    reference_mask: str = "color-distance"  # masks without label.png files: color-distance | center | none
    center_fraction: float = 0.75  # side of the centre box for reference_mask=center (and its fallback)
    background_dir: Optional[str] = None  # image folder; None: non-target training images
    max_object_width: int = 400  # o_w <= this (official: max_size/2 = 400)
    max_object_height: Optional[int] = None  # optional cap on o_h (not in the official code; memory of the canvas)
    object_width: Optional[int] = None  # resize every object to this width (upscaling allowed); None: native size
    object_marginal: float = 0.05  # object jitter from its edge, fraction of the canvas length
    trigger_marginal: float = 0.25  # trigger margins: dx = trigger_marginal/2 · p_w, dy = trigger_marginal · p_h
    layout: str = "left-right"  # left-right (official code) | top-bottom | both (one per image at random)
    support_ratio: float = 0.0  # CorruptEncoder+: share of the budget that are support poisoned images (0.2)
    num_support: int = 5  # support reference images (official: 5 per class)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.reference_mask not in MASKS:
            raise ConfigError(f"attack.params.reference_mask='{self.reference_mask}' is unknown; choose one of: {', '.join(MASKS)}")
        if self.layout not in LAYOUTS:
            raise ConfigError(f"attack.params.layout='{self.layout}' is unknown; choose one of: {', '.join(LAYOUTS)}")
        if not 0.0 <= float(self.support_ratio) < 1.0:
            raise ConfigError(f"attack.params.support_ratio={self.support_ratio} must lie in [0, 1) (paper: 0.2 for CorruptEncoder+)")
        if not 0.0 <= float(self.object_marginal) < 0.25:
            raise ConfigError(f"attack.params.object_marginal={self.object_marginal} must lie in [0, 0.25) (paper: 0.05)")
        if not 0.0 <= float(self.trigger_marginal) < 0.5:
            raise ConfigError(f"attack.params.trigger_marginal={self.trigger_marginal} must lie in [0, 0.5) (paper: 0.25)")
        for k in ("num_references", "max_object_width", "num_support"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"attack.params.{k}={v!r} must be a positive integer")
        for k in ("max_object_height", "object_width"):
            v = getattr(self, k)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ConfigError(f"attack.params.{k}={v!r} must be a positive integer or null")
        if not 0.0 < float(self.center_fraction) <= 1.0:
            raise ConfigError(f"attack.params.center_fraction={self.center_fraction} must lie in (0, 1]")
        for k in ("reference_dir", "background_dir"):
            v = getattr(self, k)
            if v and not Path(v).expanduser().is_dir():
                raise ConfigError(f"attack.params.{k} '{v}' is not a folder; check the path")


@ATTACKS.register("corruptencoder")
class CorruptEncoder(SSLBackdoorAttack):
    """Reference object + background + trigger composites, added to the training set (see module docstring)."""

    name = "corruptencoder"
    Params = CorruptEncoderParams

    # -- inputs ------------------------------------------------------------------------------------------------

    def reference_images(self, train: ImageDataset, target: int, g: torch.Generator) -> tuple[list, list, dict]:
        """(reference (image, mask-or-None, source) list, support images list, provenance)."""
        p = self.params
        if p.reference_dir:
            root = Path(p.reference_dir).expanduser()
            dirs = sorted(d for d in root.iterdir() if d.is_dir() and d.name != "support-images" and (d / "img.png").exists())
            if len(dirs) < p.num_references:
                raise DataError(f"reference_dir '{root}' has {len(dirs)} reference folders with img.png; need "
                                f"{p.num_references} (lower attack.params.num_references)")
            pick = torch.randperm(len(dirs), generator=g)[: p.num_references].sort().values.tolist()
            refs = []
            for i in pick:
                d = dirs[i]
                mask = read_mask(d / "label.png") if (d / "label.png").exists() else None
                refs.append((read_image(d / "img.png"), mask, str(d / "img.png")))
            sup_dir = root / "support-images"
            sups = [(read_image(f), str(f)) for f in list_images(sup_dir)] if sup_dir.is_dir() else []
            return refs, sups, {"reference_dir": str(root)}
        cand = (train.labels == target).nonzero().view(-1)
        need = p.num_references + (p.num_support if p.support_ratio > 0 else 0)
        if len(cand) < need:
            raise DataError(f"only {len(cand)} training images of the target class; {need} references/support "
                            "images are needed (lower num_references/num_support or give reference_dir)")
        perm = cand[torch.randperm(len(cand), generator=g)]
        ref_idx, sup_idx = perm[: p.num_references].tolist(), perm[p.num_references : need].tolist()
        sz = train.valid_sizes()
        refs = [(train.images[i, :, : int(sz[i, 0]), : int(sz[i, 1])].clone(), None, f"train[{i}]") for i in ref_idx]
        sups = [(train.images[i, :, : int(sz[i, 0]), : int(sz[i, 1])].clone(), f"train[{i}]") for i in sup_idx]
        return refs, sups, {"reference_indices": ref_idx, "support_indices": sup_idx}

    def objects(self, refs: list) -> list[RefObject]:
        p = self.params
        out = []
        for img, mask, src in refs:
            h, w = img.shape[1:]
            if mask is not None:
                if mask.shape != (h, w):
                    raise DataError(f"reference '{src}': label.png is {mask.shape[1]}x{mask.shape[0]} but the image is "
                                    f"{w}x{h}; give a mask of the image's size")
                out.append(cut_object(img, mask, src, "label.png"))
            elif p.reference_dir or p.reference_mask == "none":
                out.append(RefObject(img, torch.ones(h, w), src, "none (whole image)"))
            elif p.reference_mask == "center":
                out.append(cut_object(img, center_mask(h, w, p.center_fraction), src, "center"))
            else:
                m, how = color_distance_mask(img, fraction=p.center_fraction)
                out.append(cut_object(img, m, src, how))
        return out

    def scale_object(self, obj: RefObject) -> RefObject:
        """Resize to the width rules, then upscale if the trigger would not fit (the small-object guard)."""
        p, t = self.params, self.trigger.size
        h, w = obj.image.shape[1:]
        s = p.object_width / w if p.object_width else min(1.0, p.max_object_width / w)
        if p.max_object_height:
            s = min(s, p.max_object_height / h)
        nh, nw = max(1, round(h * s)), max(1, round(w * s))
        need_l, need_c = min_object_size(t, p.object_marginal)
        need_w, need_h = {"left-right": (need_l, need_c), "top-bottom": (need_c, need_l)}.get(p.layout, (need_l, need_l))
        up = max(1.0, need_w / nw, need_h / nh)  # keep the aspect ratio while making room for the trigger
        if up > 1.0:
            nh, nw = max(need_h, math.ceil(nh * up)), max(need_w, math.ceil(nw * up))
        if (nh, nw) == (h, w):
            return obj
        return RefObject(resize_image(obj.image, nh, nw), resize_mask(obj.alpha, nh, nw), obj.source, obj.mask)

    def backgrounds(self, train: ImageDataset, target: int, n: int, g: torch.Generator) -> tuple[list, dict]:
        p = self.params
        if p.background_dir:
            files = list_images(Path(p.background_dir).expanduser())
            if not files:
                raise DataError(f"background_dir '{p.background_dir}' contains no images ({', '.join(IMAGE_EXTENSIONS)})")
            idx = self._draw(len(files), n, g)
            cache: dict[int, torch.Tensor] = {}
            out = []
            for i in idx:
                if i not in cache:
                    cache[i] = read_image(files[i])
                out.append(cache[i])
            return out, {"background_dir": str(p.background_dir), "background_files": [str(files[i]) for i in idx]}
        cand = (train.labels != target).nonzero().view(-1)
        if len(cand) == 0:
            raise DataError("no non-target training images to use as backgrounds; give attack.params.background_dir")
        idx = cand[torch.tensor(self._draw(len(cand), n, g), dtype=torch.int64)].tolist() if n else []
        sz = train.valid_sizes()
        return ([train.images[i, :, : int(sz[i, 0]), : int(sz[i, 1])] for i in idx],
                {"background_indices": idx})

    @staticmethod
    def _draw(pool: int, n: int, g: torch.Generator) -> list[int]:
        """n distinct indices when possible, else with replacement."""
        if n <= pool:
            return torch.randperm(pool, generator=g)[:n].tolist()
        return torch.randint(0, pool, (n,), generator=g).tolist()

    # -- crafting ----------------------------------------------------------------------------------------------

    def compose(self, obj: RefObject, bg: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, dict]:
        """One poisoned image (uint8 (3,p_h,p_w)) and its geometry."""
        p, t = self.params, self.trigger.size
        o_h, o_w = obj.image.shape[1:]
        u = torch.rand(5, generator=g, dtype=torch.float64).tolist()
        orient = p.layout if p.layout != "both" else ("left-right" if u[3] < 0.5 else "top-bottom")
        side = ("left" if u[4] < 0.5 else "right") if orient == "left-right" else ("top" if u[4] < 0.5 else "bottom")
        geo = corrupt_layout(o_h, o_w, t, side, u[:3], p.object_marginal, p.trigger_marginal)
        ph, pw = geo["p_h"], geo["p_w"]
        bh, bw = bg.shape[1:]
        f = max(ph / bh, pw / bw, 1.0)
        lh, lw = max(ph, round(bh * f)), max(pw, round(bw * f))
        big = resize_image(bg, lh, lw)
        bx = int(torch.randint(0, lw - pw + 1, (1,), generator=g))
        by = lh - ph  # bottom-aligned, as the official code
        im = big[:, by : by + ph, bx : bx + pw].float()
        a = blur_alpha(obj.alpha)
        oy, ox = geo["o_y"], geo["o_x"]
        region = im[:, oy : oy + o_h, ox : ox + o_w]
        im[:, oy : oy + o_h, ox : ox + o_w] = a * obj.image.float() + (1 - a) * region
        out = im.round().clamp(0, 255).to(torch.uint8)
        self.paste(out, geo["t_y"], geo["t_x"])
        geo.update(o_h=o_h, o_w=o_w, t=t, kind="composite")
        return out, geo

    def paste(self, img: torch.Tensor, y: int, x: int) -> None:
        s, a = self.trigger.size, float(self.trigger.spec.opacity)
        patch = self.trigger.patch
        if a >= 1.0:
            img[:, y : y + s, x : x + s] = patch
        else:
            r = img[:, y : y + s, x : x + s].float()
            img[:, y : y + s, x : x + s] = ((1 - a) * r + a * patch.float()).round().clamp(0, 255).to(torch.uint8)

    def support_image(self, sup: torch.Tensor, ref: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, dict]:
        """CorruptEncoder+: support reference image and whole reference image side by side, no trigger."""
        p = self.params
        h, w = sup.shape[1:]
        nw = min(w, p.max_object_width)
        nh = max(1, round(h * nw / w))
        if p.max_object_height and nh > p.max_object_height:
            nh, nw = p.max_object_height, max(1, round(w * p.max_object_height / h))
        a, b = resize_image(sup, nh, nw), resize_image(ref, nh, nw)
        first = bool(torch.rand(1, generator=g) < 0.5)
        img = torch.cat([a, b] if first else [b, a], dim=2)
        return img, {"kind": "support", "p_h": nh, "p_w": 2 * nw, "support_first": first}

    def craft(self, splits: ImageSplits, target: int, n: int, g: torch.Generator, seed: int, t0: float) -> PoisonResult:
        p = self.params
        train = splits.train
        n_sup = int(n * float(p.support_ratio))
        n_comp = n - n_sup
        refs, sups, prov = self.reference_images(train, target, g)
        if n_sup and not sups:
            raise DataError("CorruptEncoder+ needs support images: add reference_dir/support-images/ or use the "
                            "training images (no reference_dir)")
        objs = [self.scale_object(o) for o in self.objects(refs)]
        bgs, bprov = self.backgrounds(train, target, n_comp, g)
        extra, layout = [], []
        for i in range(n_comp):
            k = int(torch.randint(0, len(objs), (1,), generator=g))
            img, geo = self.compose(objs[k], bgs[i], g)
            geo["reference"] = k
            extra.append(img)
            layout.append(geo)
        for _ in range(n_sup):
            s = int(torch.randint(0, len(sups), (1,), generator=g))
            k = int(torch.randint(0, len(refs), (1,), generator=g))
            img, geo = self.support_image(sups[s][0], refs[k][0], g)
            geo.update(reference=k, support=s)
            extra.append(img)
            layout.append(geo)
        details = {**prov, **bprov, "composites": n_comp, "support_images": n_sup,
                   "objects": [{"source": o.source, "mask": o.mask, "size": list(o.image.shape[1:])} for o in objs],
                   "layout": layout}
        return self.finish(splits, extra, target, seed, details, t0)


@dataclass
class CorruptEncoderPlusParams(CorruptEncoderParams):
    support_ratio: float = 0.2  # CorruptEncoder+: 20% of the budget are support poisoned images


@ATTACKS.register("corruptencoder-plus")
class CorruptEncoderPlus(CorruptEncoder):
    """CorruptEncoder with ``support_ratio`` = 0.2 support poisoned images (no trigger) in the budget."""

    name = "corruptencoder-plus"
    Params = CorruptEncoderPlusParams
