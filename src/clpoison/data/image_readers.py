"""Dataset readers: the ``data.name`` sources that load image files into :class:`~clpoison.data.datasets.ImageSplits`.

Each source is registered by name in :data:`SOURCES` and returns a train and a test split of uint8 images with
labels and class names (containers in :mod:`clpoison.data.datasets`); :func:`load_dataset` picks one by name.

Sources (selected in config by ``data.name``):

* ``cifar10-subset`` — the bundled real CIFAR-10 subset (5,438 train / 1,017 test images), no path needed;
* ``npz`` — a file with ``x_train``, ``y_train``, ``x_test``, ``y_test`` and ``class_names``
  (images NHWC or NCHW uint8; both splits one image size, unless ``train_sizes`` / ``test_sizes`` give each
  image's valid (h, w) on a padded canvas, as exports of CorruptEncoder poisons do);
* ``cifar`` — a ``cifar-10-batches-py`` or ``cifar-100-python`` directory in the standard pickle layout;
* ``imagefolder`` — ``ROOT/train/CLASS/*.png`` and ``ROOT/test/CLASS/*.png`` (or ``ROOT/CLASS/*`` with a
  seeded hold-out split). Trees that fit in ``max_resident_bytes`` are decoded once into a tensor; larger ones
  stream (see :class:`StreamingImageFolder`).
"""

from __future__ import annotations

import contextlib
import os
import pickle
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch

from ..errors import DataError
from ..registry import Registry
from .datasets import ImageDataset, ImageSplits
from .split_info import StreamedFromFiles

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm", ".gif", ".tif", ".tiff")


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
        if len(x) == 0:
            raise DataError(f"npz dataset '{p}': x_{split} holds no images; both splits need at least one")
        if y.dtype.kind not in "iu" or int(y.min()) < 0 or int(y.max()) >= len(classes):
            raise DataError(f"npz dataset '{p}': y_{split} must hold integer labels in 0..{len(classes) - 1} "
                            f"({len(classes)} classes)")
    with np.load(p, allow_pickle=False) as z:  # optional valid (h, w) per image of a padded canvas (exports)
        try:
            sizes = {k: torch.from_numpy(z[f"{k}_sizes"].astype(np.int64)) if f"{k}_sizes" in z.files else None
                     for k in ("train", "test")}
        except Exception as e:
            raise DataError(f"npz dataset '{p}' has unreadable *_sizes arrays ({type(e).__name__}); re-export it") from None
    train = ImageDataset(_to_nchw_uint8(xtr, f"{p}:x_train"), torch.from_numpy(ytr.astype(np.int64)), classes,
                         f"{name}/train", sizes["train"])
    test = ImageDataset(_to_nchw_uint8(xte, f"{p}:x_test"), torch.from_numpy(yte.astype(np.int64)), classes,
                        f"{name}/test", sizes["test"])
    if sizes["train"] is None and sizes["test"] is None and train.images.shape[1:] != test.images.shape[1:]:
        raise DataError(f"npz dataset '{p}': x_train images are {tuple(train.images.shape[2:])} but x_test images "
                        f"{tuple(test.images.shape[2:])}; both splits must have one image size")
    return ImageSplits(train, test, {"name": name, "path": str(p)})


# the only globals a CIFAR batch pickle names: NumPy's array / dtype reconstruction (NumPy 1.x and 2.x module
# paths) and, for Python-3 protocol-2 pickles of bytes, ``_codecs.encode``. None of them runs user code.
_CIFAR_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles a CIFAR batch (a dict of bytes, lists and NumPy arrays) and refuses every other global, so a
    crafted file cannot import or call anything (``os.system``, ``builtins.eval``, ...)."""

    def find_class(self, module: str, name: str):
        if (module, name) in _CIFAR_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it names {module}.{name}, which a CIFAR batch never does")


def _unpickle(path: Path) -> dict:
    """The dict in CIFAR batch ``path``, read by :class:`_CifarUnpickler` (nothing but NumPy arrays is built)."""
    try:
        with open(path, "rb") as f:
            d = _CifarUnpickler(f, encoding="latin1").load()
    except pickle.UnpicklingError as e:
        raise DataError(f"CIFAR batch '{path}' was refused: {e}; only standard CIFAR pickles are read") from None
    except Exception as e:
        raise DataError(f"CIFAR batch '{path}' cannot be read ({type(e).__name__}); re-download the dataset") from None
    if not isinstance(d, dict):
        raise DataError(f"CIFAR batch '{path}' holds a {type(d).__name__}, not a dict; re-download the dataset")
    return d


@SOURCES.register("cifar")
def load_cifar_dir(path: Optional[str | os.PathLike] = None, **_: object) -> ImageSplits:
    """``cifar-10-batches-py`` (data_batch_1..5, test_batch, batches.meta) or ``cifar-100-python`` (train, test, meta).

    The files are Python pickles; they are read by a restricted unpickler that builds only dicts, lists, bytes
    and NumPy arrays and refuses any other object (a crafted file cannot run code).
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


def list_image_files(folder: Path) -> list[Path]:
    """Image files (:data:`IMAGE_EXTENSIONS`) anywhere under ``folder``, sorted by path."""
    return sorted(f for f in folder.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)


def _list_image_tree(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"image folder '{root}' has no class sub-folders; use ROOT/CLASS/image.png")
    items = [(f, ci) for ci, c in enumerate(classes) for f in list_image_files(root / c)]
    if not items:
        raise DataError(f"image folder '{root}' contains no images ({', '.join(IMAGE_EXTENSIONS)})")
    return classes, items


MAX_PIXELS_ENV = "CLPOISON_MAX_IMAGE_PIXELS"
MAX_IMAGE_PIXELS = 64_000_000  # 8000 x 8000: larger images (and decompression bombs) are refused before decoding


def max_image_pixels() -> int:
    raw = os.environ.get(MAX_PIXELS_ENV, "")
    return int(raw) if raw.isdigit() and int(raw) > 0 else MAX_IMAGE_PIXELS


@contextlib.contextmanager
def open_image(path: Any, what: str = "image", fix: str = "remove or replace it") -> Iterator[Any]:
    """A PIL image, opened lazily; one DataError line naming ``path`` when it is unreadable, a decompression bomb
    or larger than :func:`max_image_pixels` (checked from its header, before any pixel is decoded)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            w, h = im.size
            if w < 1 or h < 1 or w * h > max_image_pixels():
                raise DataError(f"{what} '{path}' is {w} x {h} pixels, beyond the bound of {max_image_pixels():,} "
                                f"({MAX_PIXELS_ENV}); {fix}")
            yield im
    except DataError:
        raise
    except Image.DecompressionBombError:
        raise DataError(f"{what} '{path}' is a decompression bomb (its header declares more pixels than PIL decodes); "
                        f"{fix}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as e:
        raise DataError(f"{what} '{path}' is unreadable or corrupt ({type(e).__name__}); {fix}") from None


def decode_image(path: Path, size: Optional[int]) -> torch.Tensor:
    """Decode one image file to uint8 (3,H,W), resized (shorter side, then centre crop) to ``size``."""
    from PIL import Image

    with open_image(path) as im:
        im = im.convert("RGB")
        if size is not None:
            w, h = im.size
            s = size / min(w, h)
            nw, nh = max(size, round(w * s)), max(size, round(h * s))
            im = im.resize((nw, nh), Image.BICUBIC)
            left, top = (nw - size) // 2, (nh - size) // 2
            im = im.crop((left, top, left + size, top + size))
        arr = np.asarray(im, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


class StreamingImageFolder(StreamedFromFiles):
    """An ImageFolder split too large for memory: uint8 batches decoded on the fly (training: in loader worker
    processes, :class:`~clpoison.data.image_stream.StreamedImageBatches`; evaluation: with threads).

    It offers what the training loop needs from a resident dataset (``__len__``, ``class_names``, ``labels``)
    and ``batches(index_batches)`` that decodes only the requested images; it is fingerprinted by its files
    (:mod:`clpoison.data.split_info`).
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

    def subset(self, index: torch.Tensor | Sequence[int], name: Optional[str] = None) -> "StreamingImageFolder":
        """The images at ``index`` (still streamed), like :meth:`ImageDataset.subset`."""
        return StreamingImageFolder([self.items[int(i)] for i in index], self.class_names, self.size, name or self.name)

    def storage(self) -> dict[str, Any]:
        return {"streamed": True, "files": len(self.items), "held": f"streamed from {len(self.items)} image files"}

    def content_fingerprint(self) -> str:
        return self.resume_fingerprint()

    @property
    def images(self) -> "StreamingImageFolder":
        """The split itself stands in for its image tensor: ``len``, ``shape``, ``[slice or index]``, ``load(index)``."""
        return self

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.items), 3, self.size, self.size)

    def __getitem__(self, index: slice | torch.Tensor | Sequence[int]) -> torch.Tensor:
        """uint8 images at ``index`` (a slice or positions), decoded from their files."""
        rows = torch.arange(len(self.items))[index] if isinstance(index, slice) else torch.as_tensor(index).view(-1)
        return self.load(rows)

    def batch_source(self, batch_size: int, device: torch.device, workers: int = 2, **kw: Any) -> Any:
        """:class:`~clpoison.data.image_stream.StreamedImageBatches`: batches decoded ahead in ``workers`` processes."""
        from .image_stream import StreamedImageBatches

        return StreamedImageBatches(self, batch_size, device, **kw, workers=workers)

    def load(self, index: torch.Tensor, threads: Optional[int] = None) -> torch.Tensor:
        """uint8 (len(index),3,size,size) of the images at ``index``, decoded by ``threads`` threads (default: up to 8;
        1: in this thread — a loader worker process)."""
        from concurrent.futures import ThreadPoolExecutor

        paths = [self.items[int(i)][0] for i in index]
        threads = min(8, os.cpu_count() or 1) if threads is None else threads
        if threads <= 1:
            return torch.stack([decode_image(p, self.size) for p in paths])
        with ThreadPoolExecutor(max_workers=threads) as ex:
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
