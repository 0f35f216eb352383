"""Image datasets held as uint8 tensors, and the loaders that produce them.

A dataset is a pair of splits (``train``, ``test``), each an :class:`ImageDataset`: uint8 images of shape
(N, 3, H, W), int64 labels and the class names. Pretraining never reads the labels; evaluation does.

Sources (selected in config by ``data.name``):

* ``cifar10-subset`` — the bundled real CIFAR-10 subset (5,438 train / 1,017 test images), no path needed;
* ``npz`` — a file with ``x_train``, ``y_train``, ``x_test``, ``y_test`` and ``class_names``
  (images NHWC or NCHW uint8);
* ``cifar`` — a ``cifar-10-batches-py`` or ``cifar-100-python`` directory in the standard pickle layout;
* ``imagefolder`` — ``ROOT/train/CLASS/*.png`` and ``ROOT/test/CLASS/*.png`` (or ``ROOT/CLASS/*`` with a
  seeded hold-out split). Trees that fit in ``max_resident_bytes`` are decoded once into a tensor; larger ones
  stream (see :class:`StreamingImageFolder`).
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch

from ..errors import DataError
from ..registry import Registry

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm", ".gif", ".tif", ".tiff")


@dataclass
class ImageDataset:
    """One split: uint8 images (N,3,H,W), int64 labels (N,), class names.

    ``sizes`` (N,2 int64, optional) gives the valid (height, width) of each image when images of different
    sizes share one zero-padded canvas (e.g. 32×64 poisoned composites next to 32×32 images); the image
    occupies the top-left corner of the canvas. ``None`` means every image fills the canvas.
    """

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    name: str = "dataset"
    sizes: Optional[torch.Tensor] = None

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3:
            raise DataError(
                f"{self.name}: images must be uint8 (N,3,H,W), got {tuple(self.images.shape)} "
                f"{self.images.dtype}; convert the images to 8-bit RGB"
            )
        self.labels = torch.as_tensor(self.labels, dtype=torch.int64)
        if self.labels.ndim != 1 or len(self.labels) != len(self.images):
            raise DataError(
                f"{self.name}: {len(self.labels)} labels for {len(self.images)} images; "
                "provide exactly one label per image"
            )
        if len(self.labels) and (int(self.labels.min()) < 0 or int(self.labels.max()) >= len(self.class_names)):
            raise DataError(
                f"{self.name}: labels must lie in [0, {len(self.class_names) - 1}] for "
                f"{len(self.class_names)} class names; fix the labels or the class list"
            )
        if self.sizes is not None:
            self.sizes = torch.as_tensor(self.sizes, dtype=torch.int64)
            if self.sizes.shape != (len(self.images), 2):
                raise DataError(f"{self.name}: sizes must be (N,2), got {tuple(self.sizes.shape)}")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def subset(self, index: torch.Tensor | Sequence[int], name: Optional[str] = None) -> "ImageDataset":
        index = torch.as_tensor(index, dtype=torch.int64)
        return ImageDataset(
            self.images[index],
            self.labels[index],
            list(self.class_names),
            name or self.name,
            None if self.sizes is None else self.sizes[index],
        )

    def valid_sizes(self) -> torch.Tensor:
        """(N,2) valid (h, w) of every image, whether or not the canvas is padded."""
        if self.sizes is not None:
            return self.sizes
        _, _, h, w = self.images.shape
        return torch.tensor([[h, w]], dtype=torch.int64).expand(len(self), 2)

    def class_index(self, label: str | int) -> int:
        """Index of a class given by name or index, with a clear error."""
        if isinstance(label, int) or (isinstance(label, str) and label.isdigit()):
            i = int(label)
            if not 0 <= i < self.num_classes:
                raise DataError(f"class index {i} out of range [0, {self.num_classes - 1}] for {self.name}")
            return i
        if label not in self.class_names:
            raise DataError(
                f"class '{label}' is not in {self.name}'s classes ({', '.join(self.class_names)}); pick one of them"
            )
        return self.class_names.index(label)


@dataclass
class ImageSplits:
    """A dataset with its train and test split (and where it came from)."""

    train: ImageDataset
    test: ImageDataset
    source: dict = field(default_factory=dict)

    @property
    def class_names(self) -> list[str]:
        return self.train.class_names

    def describe(self) -> dict:
        return {
            "source": self.source,
            "classes": self.class_names,
            "train": {"images": len(self.train), "shape": list(self.train.image_shape)},
            "test": {"images": len(self.test), "shape": list(self.test.image_shape)},
        }


# --------------------------------------------------------------------------------------------------------------
# helpers


def _require_path(path: Optional[str | os.PathLike], what: str) -> Path:
    if path is None or str(path) == "":
        raise DataError(f"{what}: no path given; set data.path to the dataset location")
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{what}: path '{p}' does not exist; check data.path")
    return p


def _to_nchw_uint8(x: np.ndarray, what: str) -> torch.Tensor:
    if x.dtype != np.uint8:
        raise DataError(f"{what}: images must be uint8, got {x.dtype}; save them as 8-bit RGB")
    if x.ndim != 4:
        raise DataError(f"{what}: images must be 4-D (N,H,W,3) or (N,3,H,W), got shape {x.shape}")
    if x.shape[-1] == 3 and x.shape[1] != 3:
        x = x.transpose(0, 3, 1, 2)
    elif x.shape[1] != 3:
        raise DataError(f"{what}: cannot find the 3 colour channels in shape {x.shape}; use NHWC or NCHW RGB")
    return torch.from_numpy(np.ascontiguousarray(x))


def limit(ds, n: Optional[int]):
    """The first ``n`` images (stratification is the caller's business); ``None`` keeps all."""
    if n is None or n >= len(ds):
        return ds
    if isinstance(ds, StreamingImageFolder):
        return StreamingImageFolder(ds.items[:n], ds.class_names, ds.size, ds.name)
    return ds.subset(torch.arange(n))


# --------------------------------------------------------------------------------------------------------------
# sources

SOURCES: Registry[Callable[..., ImageSplits]] = Registry("dataset")


def bundled_path() -> Path:
    return Path(str(resources.files("clpoison.data") / "bundled" / "cifar10_subset.npz"))


@SOURCES.register("cifar10-subset")
def load_cifar10_subset(path: Optional[str] = None, **_: object) -> ImageSplits:
    """Bundled real CIFAR-10 subset: the leading rows of the official batches (see the package README)."""
    p = bundled_path()
    if not p.exists():
        raise DataError(f"bundled data missing at {p}; reinstall clpoison (pip install -e .)")
    splits = load_npz(p, name="cifar10-subset")
    splits.source = {"name": "cifar10-subset", "path": str(p)}
    return splits


@SOURCES.register("npz")
def load_npz(path: Optional[str | os.PathLike] = None, name: str = "npz", **_: object) -> ImageSplits:
    """NPZ with ``x_train``, ``y_train``, ``x_test``, ``y_test`` and optional ``class_names``."""
    p = _require_path(path, "npz dataset")
    try:
        z = np.load(p, allow_pickle=False)
    except Exception as e:  # zipfile.BadZipFile, OSError, ValueError
        raise DataError(f"npz dataset '{p}' cannot be read ({type(e).__name__}); is it a valid .npz file?") from None
    with z:
        missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in z.files]
        if missing:
            raise DataError(
                f"npz dataset '{p}' lacks arrays {missing}; it needs x_train, y_train, x_test, y_test "
                "(and optionally class_names)"
            )
        try:
            xtr, ytr, xte, yte = (z[k] for k in ("x_train", "y_train", "x_test", "y_test"))
            if "class_names" in z.files:
                classes = [str(c) for c in z["class_names"].tolist()]
            else:
                n = int(max(ytr.max(initial=0), yte.max(initial=0))) + 1
                classes = [str(i) for i in range(n)]
        except Exception as e:
            raise DataError(f"npz dataset '{p}' is corrupt ({type(e).__name__}: {e}); re-export it") from None
    for split, x, y in (("train", xtr, ytr), ("test", xte, yte)):
        if len(x) != len(y):
            raise DataError(
                f"npz dataset '{p}': x_{split} has {len(x)} images but y_{split} has {len(y)} labels; "
                "they must match"
            )
    train = ImageDataset(_to_nchw_uint8(xtr, f"{p}:x_train"), torch.from_numpy(ytr.astype(np.int64)), classes, f"{name}/train")
    test = ImageDataset(_to_nchw_uint8(xte, f"{p}:x_test"), torch.from_numpy(yte.astype(np.int64)), classes, f"{name}/test")
    return ImageSplits(train, test, {"name": name, "path": str(p)})


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")
    except Exception as e:
        raise DataError(f"CIFAR batch '{path}' cannot be read ({type(e).__name__}); re-download the dataset") from None


@SOURCES.register("cifar")
def load_cifar_dir(path: Optional[str | os.PathLike] = None, **_: object) -> ImageSplits:
    """``cifar-10-batches-py`` (data_batch_1..5, test_batch, batches.meta) or ``cifar-100-python`` (train, test, meta).

    Note: the files are Python pickles; only load directories you trust.
    """
    root = _require_path(path, "cifar dataset")
    if (root / "data_batch_1").exists():
        train_files = sorted(root.glob("data_batch_*"))
        test_files = [root / "test_batch"]
        meta_file, label_key, names_key = root / "batches.meta", "labels", "label_names"
    elif (root / "train").exists() and (root / "meta").exists():
        train_files, test_files = [root / "train"], [root / "test"]
        meta_file, label_key, names_key = root / "meta", "fine_labels", "fine_label_names"
    else:
        raise DataError(
            f"cifar dataset '{root}' has neither data_batch_1 (CIFAR-10) nor train+meta (CIFAR-100); "
            "point data.path at cifar-10-batches-py or cifar-100-python"
        )

    def read(files: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for f in files:
            if not f.exists():
                raise DataError(f"cifar dataset: missing file '{f}'; the directory is incomplete")
            d = _unpickle(f)
            try:
                x = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
                y = np.asarray(d[label_key], dtype=np.int64)
            except Exception:
                raise DataError(f"CIFAR batch '{f}' is corrupt (bad data/labels); re-download the dataset") from None
            if len(x) != len(y):
                raise DataError(f"CIFAR batch '{f}': {len(x)} images but {len(y)} labels; the file is truncated")
            xs.append(x)
            ys.append(y)
        return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))

    meta = _unpickle(meta_file) if meta_file.exists() else {}
    xtr, ytr = read(train_files)
    xte, yte = read(test_files)
    classes = list(meta.get(names_key, [str(i) for i in range(int(ytr.max()) + 1)]))
    return ImageSplits(
        ImageDataset(xtr, ytr, classes, "cifar/train"),
        ImageDataset(xte, yte, classes, "cifar/test"),
        {"name": "cifar", "path": str(root)},
    )


def _list_image_tree(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"image folder '{root}' has no class sub-folders; use ROOT/CLASS/image.png")
    items = []
    for ci, c in enumerate(classes):
        for f in sorted((root / c).rglob("*")):
            if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file():
                items.append((f, ci))
    if not items:
        raise DataError(f"image folder '{root}' contains no images ({', '.join(IMAGE_EXTENSIONS)})")
    return classes, items


def decode_image(path: Path, size: Optional[int]) -> torch.Tensor:
    """Decode one image file to uint8 (3,H,W), resized (shorter side, then centre crop) to ``size``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if size is not None:
                w, h = im.size
                s = size / min(w, h)
                nw, nh = max(size, round(w * s)), max(size, round(h * s))
                im = im.resize((nw, nh), Image.BICUBIC)
                left, top = (nw - size) // 2, (nh - size) // 2
                im = im.crop((left, top, left + size, top + size))
            arr = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"image '{path}' is unreadable or corrupt ({type(e).__name__}); remove or replace it") from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


class StreamingImageFolder:
    """An ImageFolder split too large for memory: yields uint8 batches decoded on the fly (with worker threads).

    It offers what the training loop needs from a resident dataset (``__len__``, ``class_names``, ``labels``)
    and ``batches(index_batches)`` that decodes only the requested images.
    """

    def __init__(self, items: list[tuple[Path, int]], class_names: list[str], size: int, name: str) -> None:
        self.items = items
        self.class_names = class_names
        self.size = size
        self.name = name
        self.labels = torch.tensor([c for _, c in items], dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (3, self.size, self.size)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def images(self) -> "StreamingImageFolder":
        """The split itself stands in for its image tensor: consumers call ``len`` and ``load(index)``."""
        return self

    def load(self, index: torch.Tensor) -> torch.Tensor:
        from concurrent.futures import ThreadPoolExecutor

        paths = [self.items[int(i)][0] for i in index]
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as ex:
            imgs = list(ex.map(lambda p: decode_image(p, self.size), paths))
        return torch.stack(imgs)

    def batches(self, index_batches: Iterator[torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for idx in index_batches:
            yield idx, self.load(idx)


@SOURCES.register("imagefolder")
def load_image_folder(
    path: Optional[str | os.PathLike] = None,
    image_size: Optional[int] = 32,
    test_fraction: float = 0.1,
    seed: int = 0,
    max_resident_bytes: int = 8 << 30,
    **_: object,
) -> ImageSplits:
    """``ROOT/train/CLASS/*`` + ``ROOT/test/CLASS/*``, or ``ROOT/CLASS/*`` split with a seeded hold-out."""
    root = _require_path(path, "imagefolder dataset")
    size = int(image_size or 32)
    if (root / "train").is_dir() and (root / "test").is_dir():
        classes, train_items = _list_image_tree(root / "train")
        test_classes, test_items = _list_image_tree(root / "test")
        if test_classes != classes:
            raise DataError(f"image folder '{root}': train and test have different class folders; make them match")
    else:
        classes, items = _list_image_tree(root)
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(len(items), generator=g).tolist()
        n_test = max(1, int(round(test_fraction * len(items))))
        test_items = [items[i] for i in sorted(perm[:n_test])]
        train_items = [items[i] for i in sorted(perm[n_test:])]

    def split(items: list[tuple[Path, int]], name: str):
        sf = StreamingImageFolder(items, classes, size, f"imagefolder/{name}")
        if len(items) * 3 * size * size > max_resident_bytes:
            return sf  # too large to hold: decoded batch by batch while training and evaluating
        return ImageDataset(sf.load(torch.arange(len(items))), sf.labels, classes, sf.name)

    return ImageSplits(split(train_items, "train"), split(test_items, "test"), {"name": "imagefolder", "path": str(root)})


def load_dataset(name: str, path: Optional[str] = None, **kwargs: object) -> ImageSplits:
    """Load a dataset by source name (see :data:`SOURCES`)."""
    return SOURCES.get(name)(path=path, **kwargs)


# --------------------------------------------------------------------------------------------------------------
# images of different sizes on one canvas


def stack_on_canvas(images: Sequence[torch.Tensor], canvas: Optional[tuple[int, int]] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack uint8 (3,h_i,w_i) images into one zero-padded (N,3,H,W) canvas, each at the top-left corner.

    Returns ``(images, sizes)`` with ``sizes`` (N,2) = valid (h_i, w_i). ``canvas`` = (H, W) at least the largest
    image (default: exactly the largest).
    """
    if not len(images):
        return torch.zeros(0, 3, *(canvas or (1, 1)), dtype=torch.uint8), torch.zeros(0, 2, dtype=torch.int64)
    sizes = torch.tensor([[int(im.shape[1]), int(im.shape[2])] for im in images], dtype=torch.int64)
    hc, wc = int(sizes[:, 0].max()), int(sizes[:, 1].max())
    if canvas is not None:
        if canvas[0] < hc or canvas[1] < wc:
            raise DataError(f"canvas {canvas} is smaller than the largest image ({hc}, {wc}); enlarge the canvas")
        hc, wc = int(canvas[0]), int(canvas[1])
    out = torch.zeros(len(images), 3, hc, wc, dtype=torch.uint8)
    for i, im in enumerate(images):
        out[i, :, : im.shape[1], : im.shape[2]] = im
    return out, sizes


def concat_datasets(parts: Sequence[ImageDataset], name: Optional[str] = None) -> ImageDataset:
    """Concatenate splits (same class names) whose images may differ in size.

    If every part has the same image shape and no ``sizes``, this is a plain ``torch.cat`` (no canvas, no
    ``sizes``: the clean path stays as it was). Otherwise all images go onto one zero-padded canvas as large as
    the largest image, with ``sizes`` recording each image's valid area (see :class:`ImageDataset`).
    """
    parts = [p for p in parts if p is not None]
    if not parts:
        raise DataError("concat_datasets needs at least one split")
    names = parts[0].class_names
    for p in parts[1:]:
        if list(p.class_names) != list(names):
            raise DataError(f"cannot concatenate {p.name} and {parts[0].name}: their class names differ; "
                            "use splits of one dataset")
    name = name or parts[0].name
    labels = torch.cat([p.labels for p in parts])
    shapes = {tuple(p.images.shape[1:]) for p in parts if len(p)}
    if len(shapes) <= 1 and all(p.sizes is None for p in parts):
        return ImageDataset(torch.cat([p.images for p in parts]), labels, list(names), name)
    hc = max(p.images.shape[2] for p in parts)
    wc = max(p.images.shape[3] for p in parts)
    out = torch.zeros(len(labels), 3, hc, wc, dtype=torch.uint8)
    i = 0
    for p in parts:
        out[i : i + len(p), :, : p.images.shape[2], : p.images.shape[3]] = p.images
        i += len(p)
    sizes = torch.cat([p.valid_sizes() for p in parts])
    return ImageDataset(out, labels, list(names), name, sizes)
