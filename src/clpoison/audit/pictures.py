"""The pictures of an inverted trigger as PNG bytes: the mask, the pattern, the trigger itself (m⊙p), a few shadow
images with the trigger pasted, and one preview panel of all of them scaled up (nearest neighbour) for reports.

Example::

    >>> import torch
    >>> pics = trigger_pngs(torch.rand(8, 8), torch.rand(3, 8, 8), torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    >>> sorted(pics), pics["mask.png"][:4] == b"\\x89PNG"
    (['mask.png', 'pattern.png', 'preview.png', 'trigger.png', 'triggered.png'], True)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..triggers import png_bytes
from .decree import stamp


def _u8(x: torch.Tensor) -> torch.Tensor:
    return (x.float().clamp(0, 1) * 255).round().to(torch.uint8)


def _row(tiles: list[torch.Tensor], gap: int = 1) -> torch.Tensor:
    """Float (3,h,w) tiles side by side with a white gap."""
    h = tiles[0].shape[1]
    parts = []
    for i, t in enumerate(tiles):
        if i:
            parts.append(torch.ones(3, h, gap))
        parts.append(t)
    return torch.cat(parts, 2)


def trigger_pngs(mask: torch.Tensor, pattern: torch.Tensor, examples: torch.Tensor, scale: int = 4,
                 max_examples: int = 6) -> dict[str, bytes]:
    """``{file name: PNG bytes}``: ``mask.png`` (gray), ``pattern.png``, ``trigger.png`` (m⊙p), ``triggered.png``
    (up to ``max_examples`` uint8 ``examples`` with the trigger) at the input resolution, and ``preview.png`` (mask
    | pattern | trigger | triggered examples, ``scale`` × larger)."""
    m, p = mask.float().cpu(), pattern.float().cpu()
    x = examples[:max_examples].float().cpu() / 255
    trig = stamp(x, m, p)
    tiles = {"mask": m.expand(3, *m.shape), "pattern": p, "trigger": m * p}
    out = {f"{k}.png": png_bytes(_u8(v)) for k, v in tiles.items()}
    shots = _row(list(trig)) if len(trig) else torch.ones(3, *m.shape)
    out["triggered.png"] = png_bytes(_u8(shots))
    panel = _row([*tiles.values(), *trig], gap=1)
    big = F.interpolate(panel.unsqueeze(0), scale_factor=scale, mode="nearest")[0]
    out["preview.png"] = png_bytes(_u8(big))
    return out
