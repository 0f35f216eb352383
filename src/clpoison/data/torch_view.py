"""A ``torch.utils.data.Dataset`` view of a clpoison :class:`~clpoison.data.datasets.ImageDataset`, for plain
PyTorch code (``DataLoader``, other trainers): item ``i`` is ``(image, label)`` — the uint8 (3,h,w) image at its
own valid size (cropped out of a padded canvas), or ``transform(image)`` when a transform is given.

Example::

    >>> import torch
    >>> from clpoison.data.datasets import ImageDataset
    >>> ds = ImageDataset(torch.zeros(2, 3, 4, 8, dtype=torch.uint8), torch.tensor([0, 1]), ["a", "b"],
    ...                   sizes=torch.tensor([[4, 4], [4, 8]]))
    >>> view = ds.as_torch_dataset()
    >>> len(view), view[0][0].shape, view[1][0].shape, view[1][1]
    (2, torch.Size([3, 4, 4]), torch.Size([3, 4, 8]), 1)
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch.utils.data import Dataset


class TorchImageDataset(Dataset):
    """``(image, label)`` items of an ImageDataset; no copy of the images is made."""

    def __init__(self, ds: Any, transform: Optional[Callable[[torch.Tensor], Any]] = None) -> None:
        self.ds, self.transform = ds, transform

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        img = self.ds.images[i]
        if self.ds.sizes is not None:
            h, w = (int(v) for v in self.ds.sizes[i])
            img = img[:, :h, :w]
        return (self.transform(img) if self.transform is not None else img), int(self.ds.labels[i])
