"""What every training or test split says of itself, so that no caller asks whether it streams.

The four splits — held in memory (:class:`~clpoison.data.datasets.ImageDataset`,
:class:`~clpoison.data.captions.CaptionDataset`: :class:`HeldInMemory`) and streamed from files
(:class:`~clpoison.data.image_readers.StreamingImageFolder`,
:class:`~clpoison.data.shards.shard_set.StreamingCaptionSet`:
:class:`StreamedFromFiles`) — answer the same questions:

* ``storage()`` — how it is held, for the ``--dry-run`` plan: ``{"streamed": bool, "held": "held in memory" |
  "streamed from N shards" | "streamed from N image files"}`` plus the shard or file count;
* ``resident_bytes`` — the uint8 image bytes it holds in memory (0 streamed);
* ``content_fingerprint()`` — sha256 of what it holds (the manifest's record: image bytes, labels, captions, class
  names, valid sizes; streamed: by its files);
* ``resume_fingerprint()`` — what a resumed run compares (``experiments/fingerprint.py``): the content in memory,
  the file list (path, label, size, mtime) streamed — nothing is decoded;
* ``poison_files()`` — ``{file name: sha256}`` of the files an attack wrote that the split reads, hashed as this
  process reads them (a stream's poison shards, :mod:`clpoison.data.shards.shard_edits`; ``{}`` otherwise).

An image split also gives its image-SSL batch source, ``batch_source(batch_size, device, workers=..., **kw)``:
:class:`~clpoison.data.loader.ResidentBatches` in memory, :class:`~clpoison.data.image_stream.StreamedImageBatches`
(decoded ahead in ``workers`` loader processes) streamed — the same batches either way; and its images are read by
slice or index (``split.images[a:b]``: a tensor, or decoded from the files).

Example::

    >>> import torch
    >>> from clpoison.data.datasets import ImageDataset
    >>> ds = ImageDataset(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.tensor([0, 1]), ["a", "b"])
    >>> ds.storage(), ds.resident_bytes, ds.poison_files()
    ({'streamed': False, 'held': 'held in memory'}, 96, {})
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch


def tensor_fingerprint(ds: Any) -> str:
    """sha256 of a split held as tensors (or anything with ``images`` and optionally ``labels``, ``captions``,
    ``class_names``, ``sizes``): image bytes and shape, labels, captions, class names and valid sizes."""
    h = hashlib.sha256()
    images = ds.images.detach().cpu().contiguous()
    h.update(f"images{tuple(images.shape)}{images.dtype}".encode())
    h.update(images.numpy().tobytes())
    labels = getattr(ds, "labels", None)
    if labels is not None:
        h.update(b"labels")
        h.update(torch.as_tensor(labels, dtype=torch.int64).cpu().contiguous().numpy().tobytes())
    captions = getattr(ds, "captions", None)
    if captions is not None:
        h.update(b"captions")
        h.update(json.dumps(captions, ensure_ascii=False).encode("utf-8"))
    h.update(json.dumps(list(getattr(ds, "class_names", []))).encode("utf-8"))
    sizes = getattr(ds, "sizes", None)
    if sizes is not None:
        h.update(b"sizes")
        h.update(torch.as_tensor(sizes, dtype=torch.int64).contiguous().numpy().tobytes())
    return h.hexdigest()


class HeldInMemory:
    """The answers of a split held as a uint8 ``images`` tensor."""

    images: torch.Tensor

    @property
    def resident_bytes(self) -> int:
        return self.images.numel() * self.images.element_size()

    def storage(self) -> dict[str, Any]:
        return {"streamed": False, "held": "held in memory"}

    def content_fingerprint(self) -> str:
        return tensor_fingerprint(self)

    def resume_fingerprint(self) -> str:
        return self.content_fingerprint()

    def poison_files(self) -> dict[str, str]:
        return {}


class StreamedFromFiles:
    """The answers of a split read from its files as it trains: ``items`` are ``(path, label)`` (label -1 when
    none)."""

    items: list
    class_names: list[str]
    resident_bytes = 0

    def resume_fingerprint(self) -> str:
        """sha256 of the class, the count, the class names and each file's path, label, size and mtime."""
        h = hashlib.sha256(f"{type(self).__name__}:{len(self)}:{list(self.class_names or [])}".encode())
        for path, label in ((item[0], item[1]) for item in self.items):
            try:
                st = path.stat()
                h.update(f"{path}:{label}:{st.st_size}:{st.st_mtime_ns}\n".encode())
            except OSError:
                h.update(f"{path}:{label}:missing\n".encode())
        return h.hexdigest()

    def poison_files(self) -> dict[str, str]:
        return {}
