"""Data: datasets held as uint8 tensors, device-side augmentation and view samplers, batch loading; image–caption
pairs (CLIP data) in :mod:`clpoison.data.captions`, the CLIP split streamed from tar shards in
:mod:`clpoison.data.shards`."""

from .datasets import ImageDataset, ImageSplits
from .image_readers import SOURCES, load_dataset

__all__ = ["SOURCES", "ImageDataset", "ImageSplits", "load_dataset"]
