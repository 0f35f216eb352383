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

Layout (§2.5, :func:`~clpoison.attacks.corruptencoder.corruptencoder_layout.corrupt_layout`, with the §2.9 guard for small
objects): the object sits at one edge of a canvas twice its length (``p_h, p_w = o_h, 2·o_w`` for ``left-right``;
``top-bottom`` is the transposed variant, ``layout=both`` picks one per image) and the trigger inside the other
half; objects too small to leave room for the trigger are upscaled first (:meth:`CorruptEncoder.scale_object`).
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
* **backgrounds** — ``background_dir`` (any image folder, recursive; the paper's 650 Places365 scenes), or
  distinct seeded non-target training images (drawn with replacement when there are fewer than the composites):
  whole (``background: images``, the default) or, as an object-free stand-in for scene photos on object-centric
  data like CIFAR, a seeded ``background_crop``-px crop of each (``background: crops``), upscaled to the canvas
  into a smooth colour field. The manifest records which (``details.background``).
* **the setting** — the paper keeps the target class out of pretraining: ``data.exclude_classes: [TARGET]``
  with ``target_in_pretraining: false``; references and support images then come from the class's withheld
  images, which enter training only inside the poisons. The manifest records ``target_in_pretraining``.
* **trigger** — one :class:`~clpoison.triggers.Trigger` (default: a 40×40 ``uniform`` colour-noise patch,
  like the paper's colourful HTBA ``trigger_10``), the same tensor at poison time and at evaluation.

Defaults (``Params``) follow the official code: 0.5% poisons (650 for ImageNet100-A), 3 references, 40-px trigger,
``object_marginal`` 0.05, ``trigger_marginal`` 0.25, ``max_object_width`` 400, ``support_ratio`` 0 (0.2 for +).
Added rows get the target label as a placeholder (pretraining never reads labels; the official filelist uses −1).

Evaluation (:meth:`~clpoison.attacks.ssl_backdoor_base.SSLBackdoorAttack.evaluate`, shared with SSL-Backdoor and
PoisonedEncoder): clean accuracy and ASR of the linear probe trained on clean labelled data
(``context.classify``), with the trigger pasted at a random top-left position in ``[0.25·S, 0.75·S − t]`` of
every non-target test image (``location: center-range``), through
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
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Optional

import torch

from ...data.datasets import ImageDataset, ImageSplits
from ...data.image_readers import IMAGE_EXTENSIONS, list_image_files
from ...errors import ConfigError, DataError
from ..base import ATTACKS, PoisonResult
from .corruptencoder_layout import corrupt_layout, min_object_size
from .image_ops import blur_alpha, resize_image, resize_mask
from .reference_objects import RefObject, center_mask, color_distance_mask, cut_object, read_image, read_mask
from ..ssl_backdoor_base import SSLBackdoorAttack, SSLBackdoorBaseParams

MASKS = ("color-distance", "center", "none")
LAYOUTS = ("left-right", "top-bottom", "both")
BACKGROUNDS = ("images", "crops")


@dataclass
class CorruptEncoderParams(SSLBackdoorBaseParams):
    patch_only: ClassVar[bool] = True
    num_references: int = 3  # reference images/objects of the target class (paper: 3)
    reference_dir: Optional[str] = None  # DIR/<k>/img.png (+ label.png), DIR/support-images/*; None: training images
    reference_mask: str = "color-distance"  # masks without label.png files: color-distance | center | none
    center_fraction: float = 0.75  # side of the centre box for reference_mask=center (and its fallback)
    background_dir: Optional[str] = None  # image folder (the paper: Places365 scenes); None: `background`
    background: str = "images"  # without background_dir: images (non-target training images) | crops (a
    # background_crop-px crop of one, upscaled: a smooth, object-free stand-in for the paper's scene photos)
    background_crop: int = 8
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
        if self.background not in BACKGROUNDS:
            raise ConfigError(f"attack.params.background='{self.background}' is unknown; choose one of: {', '.join(BACKGROUNDS)}")
        if self.layout not in LAYOUTS:
            raise ConfigError(f"attack.params.layout='{self.layout}' is unknown; choose one of: {', '.join(LAYOUTS)}")
        if not 0.0 <= float(self.support_ratio) < 1.0:
            raise ConfigError(f"attack.params.support_ratio={self.support_ratio} must lie in [0, 1) (paper: 0.2 for CorruptEncoder+)")
        if not 0.0 <= float(self.object_marginal) < 0.25:
            raise ConfigError(f"attack.params.object_marginal={self.object_marginal} must lie in [0, 0.25) (paper: 0.05)")
        if not 0.0 <= float(self.trigger_marginal) < 0.5:
            raise ConfigError(f"attack.params.trigger_marginal={self.trigger_marginal} must lie in [0, 0.5) (paper: 0.25)")
        for k in ("num_references", "max_object_width", "num_support", "background_crop"):
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

    def reference_images(self, splits: ImageSplits, target: int, g: torch.Generator) -> tuple[list, list, dict]:
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
            sups = [(read_image(f), str(f)) for f in list_image_files(sup_dir)] if sup_dir.is_dir() else []
            return refs, sups, {"reference_dir": str(root)}
        pool, names = self.target_pool(splits, target)
        need = p.num_references + (p.num_support if p.support_ratio > 0 else 0)
        if len(pool) < need:
            raise DataError(f"only {len(pool)} images of the target class; {need} references/support "
                            "images are needed (lower num_references/num_support or give reference_dir)")
        perm = torch.randperm(len(pool), generator=g)
        ref_idx, sup_idx = perm[: p.num_references].tolist(), perm[p.num_references : need].tolist()
        sz = pool.valid_sizes()
        refs = [(pool.images[i, :, : int(sz[i, 0]), : int(sz[i, 1])].clone(), None, names[i]) for i in ref_idx]
        sups = [(pool.images[i, :, : int(sz[i, 0]), : int(sz[i, 1])].clone(), names[i]) for i in sup_idx]
        return refs, sups, {"reference_images": [names[i] for i in ref_idx], "support_images": [names[i] for i in sup_idx]}

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
            files = list_image_files(Path(p.background_dir).expanduser())
            if not files:
                raise DataError(f"background_dir '{p.background_dir}' contains no images ({', '.join(IMAGE_EXTENSIONS)})")
            idx = self._draw(len(files), n, g)
            cache: dict[int, torch.Tensor] = {}
            out = []
            for i in idx:
                if i not in cache:
                    cache[i] = read_image(files[i])
                out.append(cache[i])
            return out, {"background": "background_dir", "background_dir": str(p.background_dir),
                         "background_files": [str(files[i]) for i in idx]}
        cand = (train.labels != target).nonzero().view(-1)
        if len(cand) == 0:
            raise DataError("no non-target training images to use as backgrounds; give attack.params.background_dir")
        idx = cand[torch.tensor(self._draw(len(cand), n, g), dtype=torch.int64)].tolist() if n else []
        sz = train.valid_sizes()
        imgs = [train.images[i, :, : int(sz[i, 0]), : int(sz[i, 1])] for i in idx]
        if p.background == "crops":  # object-free stand-in: a small crop, upscaled by compose() to a smooth field
            imgs = [self.crop(im, p.background_crop, g) for im in imgs]
        return imgs, {"background": p.background, "background_crop": p.background_crop if p.background == "crops"
                      else None, "background_indices": idx}

    @staticmethod
    def crop(img: torch.Tensor, c: int, g: torch.Generator) -> torch.Tensor:
        """A seeded c×c crop (the whole image when smaller)."""
        h, w = img.shape[1:]
        c_h, c_w = min(c, h), min(c, w)
        y = int(torch.randint(0, h - c_h + 1, (1,), generator=g))
        x = int(torch.randint(0, w - c_w + 1, (1,), generator=g))
        return img[:, y : y + c_h, x : x + c_w]

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
        refs, sups, prov = self.reference_images(splits, target, g)
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
