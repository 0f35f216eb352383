"""Image datasets held as uint8 tensors: the split containers and the helpers that cut and join them.

A dataset is a pair of splits (``train``, ``test``), each an :class:`ImageDataset`: uint8 images of shape
(N, 3, H, W), int64 labels and the class names. Pretraining never reads the labels; evaluation does. Images of
different sizes share one zero-padded canvas (:func:`stack_on_canvas`, :func:`concat_datasets`). The readers that
produce datasets from files (``data.name`` sources) are in :mod:`clpoison.data.image_readers`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch

from ..errors import ConfigError, DataError
from .split_info import HeldInMemory


@dataclass
class ImageDataset(HeldInMemory):
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

    def batch_source(self, batch_size: int, device: torch.device, workers: int = 0, **kw: Any) -> Any:
        """:class:`~clpoison.data.loader.ResidentBatches` of this split (``workers``: unused, nothing to decode)."""
        from .loader import ResidentBatches

        return ResidentBatches(self, batch_size, device, **kw)

    def as_torch_dataset(self, transform: Optional[Callable[[torch.Tensor], Any]] = None) -> Any:
        """A ``torch.utils.data.Dataset`` of ``(image, label)`` (see :mod:`clpoison.data.torch_view`)."""
        from .torch_view import TorchImageDataset

        return TorchImageDataset(self, transform)

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
    """A dataset with its train and test split (and where it came from). ``downstream``, when set, is the labelled
    split the evaluation fits its classifiers on (kNN memory, linear probe) instead of ``train`` — a share of the
    training images held out of pretraining (:func:`hold_out_per_class`; No-Label Backdoors' 90/10 layout).
    ``withheld``, when set, holds the training images of classes kept out of pretraining
    (:func:`exclude_classes`): never trained on, they are the attacker's pool of target-class images."""

    train: ImageDataset
    test: ImageDataset
    source: dict = field(default_factory=dict)
    downstream: Optional[ImageDataset] = None
    withheld: Optional[ImageDataset] = None

    @property
    def class_names(self) -> list[str]:
        return self.train.class_names

    @property
    def labelled(self) -> ImageDataset:
        """The split evaluation classifiers are fitted on: ``downstream`` if held out, else ``train``."""
        return self.train if self.downstream is None else self.downstream

    def describe(self) -> dict:
        return {
            "source": self.source,
            "classes": self.class_names,
            "train": {"images": len(self.train), "shape": list(self.train.image_shape)},
            "test": {"images": len(self.test), "shape": list(self.test.image_shape)},
        }



# --------------------------------------------------------------------------------------------------------------
# helpers


def hold_out_per_class(ds: ImageDataset, fraction: float, seed: int = 42) -> tuple[ImageDataset, ImageDataset]:
    """``(rest, held)``: ``int(fraction · n_c)`` images of each class ``c`` (seeded choice, dataset order kept in
    both parts) held out — NLB's ``misc/cifar10_split.py`` (10 % per class, seed 42)."""
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"data.downstream_fraction={fraction} must lie in (0, 1)")
    g = torch.Generator().manual_seed(int(seed))
    held = []
    for c in torch.unique(ds.labels).tolist():
        rows = (ds.labels == c).nonzero().view(-1)
        held.append(rows[torch.randperm(len(rows), generator=g)[: int(fraction * len(rows))]])
    mask = torch.zeros(len(ds), dtype=torch.bool)
    mask[torch.cat(held)] = True
    return ds.subset(mask.logical_not().nonzero().view(-1)), ds.subset(mask.nonzero().view(-1), f"{ds.name}-downstream")


def exclude_classes(splits: ImageSplits, classes: Sequence[Any], key: str = "data.exclude_classes") -> ImageSplits:
    """Keep ``classes`` (names or indices) out of pretraining: their training rows move to ``splits.withheld``;
    the labelled split the probes are fitted on (``downstream``, else the whole training split) and the test split
    keep every class. CorruptEncoder's setting: pretraining on ImageNet100-A, the target class from ImageNet100-B.
    The excluded names are recorded in ``splits.source["excluded_classes"]``."""
    train = splits.train
    names = list(train.class_names)
    idx = []
    for c in classes:
        try:
            idx.append(train.class_index(c))
        except DataError:
            raise ConfigError(f"{key}: class '{c}' is not one of the data's classes ({', '.join(names)})") from None
    idx = sorted(set(idx))
    if len(idx) >= len(names):
        raise ConfigError(f"{key} excludes every class of the data; keep at least one class for pretraining")
    out = torch.isin(train.labels, torch.tensor(idx, dtype=torch.int64))
    kept = train.subset(out.logical_not().nonzero().view(-1), train.name)
    withheld = train.subset(out.nonzero().view(-1), f"{train.name}-withheld")
    source = {**splits.source, "excluded_classes": [names[i] for i in idx]}
    return ImageSplits(kept, splits.test, source, splits.labelled, withheld)


def per_class_subset(ds: Any, n: int, seed: int = 0) -> Any:
    """``n`` rows of each class (all of a class with fewer), drawn with ``seed``, kept in dataset order — a
    class-balanced subset of labelled data (``data.train_per_class``); rows labelled -1 are dropped."""
    labels = torch.as_tensor(ds.labels)
    g = torch.Generator().manual_seed(int(seed))
    keep = []
    for c in torch.unique(labels).tolist():
        if c < 0:
            continue
        rows = (labels == c).nonzero().view(-1)
        keep.append(rows[torch.randperm(len(rows), generator=g)[:n]])
    if not keep:
        raise DataError(f"{getattr(ds, 'name', 'data')}: no labelled rows for data.train_per_class; it needs class labels")
    return ds.subset(torch.cat(keep).sort().values)


def random_subset(ds: Any, n: int, seed: int = 0) -> Any:
    """``n`` rows drawn with ``seed`` (all when ``n`` ≥ the size), kept in dataset order (``data.train_subset``)."""
    if n >= len(ds):
        return ds
    g = torch.Generator().manual_seed(int(seed))
    return ds.subset(torch.randperm(len(ds), generator=g)[:n].sort().values)


def limit(ds, n: Optional[int]):
    """The first ``n`` images (stratification is the caller's business); ``None`` keeps all.

    Works on any split with ``subset``: an :class:`ImageDataset` or a
    :class:`~clpoison.data.image_readers.StreamingImageFolder` (which stays streamed).
    """
    if n is None or n >= len(ds):
        return ds
    return ds.subset(torch.arange(n))


# --------------------------------------------------------------------------------------------------------------
# images of different sizes on one canvas


CANVAS_SLACK_BYTES = 64 << 20


def check_canvas(n: int, hc: int, wc: int, sizes: torch.Tensor) -> None:
    """One DataError line when a shared (n,3,hc,wc) canvas would mostly be padding (more than 4x the images' own
    bytes plus 64 MiB): images of extreme sizes or aspect ratios read at native size (1 x 1500 beside 1500 x 1)."""
    need = n * 3 * hc * wc
    own = int((sizes[:, 0] * sizes[:, 1]).sum()) * 3 if len(sizes) else 0
    if need > 4 * own + CANVAS_SLACK_BYTES:
        tall, wide = int(sizes[:, 0].argmax()), int(sizes[:, 1].argmax())
        raise DataError(f"{n} images of very different sizes (#{tall} is {int(sizes[tall, 0])} px tall, #{wide} "
                        f"{int(sizes[wide, 1])} px wide) would share a {hc} x {wc} canvas of {need / 2**30:.1f} GiB, "
                        "mostly padding; set an image size (data.image_size) to resize them")


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
    check_canvas(len(images), hc, wc, sizes)
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
    # no check_canvas here: an attack appending poisons larger than the images (CorruptEncoder's 64x128 composites
    # beside 32x32 images) pads the clean rows by design; the readers' native-size stacks are checked
    sizes = torch.cat([p.valid_sizes() for p in parts])
    out = torch.zeros(len(labels), 3, hc, wc, dtype=torch.uint8)
    i = 0
    for p in parts:
        out[i : i + len(p), :, : p.images.shape[2], : p.images.shape[3]] = p.images
        i += len(p)
    return ImageDataset(out, labels, list(names), name, sizes)
