"""A trigger's picture: a PNG read as a uint8 (3,h,w) tensor (the ``png`` pattern) and a tensor written as a lossless
PNG (the export's ``trigger.png``, a manifest's trigger image) — shared by every trigger type."""

from __future__ import annotations

import io
import os
from typing import Optional, Union

import numpy as np
import torch


def read_png(path: Union[str, os.PathLike], size: Optional[int] = None) -> torch.Tensor:
    """A PNG (or any PIL-readable image) as uint8 (3,h,w), resized to size x size when given."""
    from PIL import Image

    from ..data.image_readers import open_image

    with open_image(path, "trigger image", "give a valid PNG file") as im:
        im = im.convert("RGB")
        if size is not None and im.size != (size, size):
            im = im.resize((size, size), Image.NEAREST)
        arr = np.asarray(im, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def png_bytes(patch: torch.Tensor) -> bytes:
    """Lossless PNG encoding of a uint8 (3,h,w) tensor (deterministic for a given tensor)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(patch.cpu().permute(1, 2, 0).numpy()).save(buf, format="PNG", optimize=False)
    return buf.getvalue()
