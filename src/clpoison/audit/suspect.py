"""The encoder under inspection, whatever file it came from, and what an inverted trigger says about it.

A :class:`Suspect` is what DECREE needs and nothing else: ``embed`` maps float images in [0, 1] (B,3,S,S) to
embeddings, differentiably (normalisation inside), and, for a CLIP with its text tower, ``class_features`` maps
class names to their (C,D) zero-shot text embeddings (prompt ensemble), compared by cosine with ``embed``. Loaders for new model formats (pretrained CLIPs, ...) build
one and plug into ``clpoison inspect`` (:data:`clpoison.experiments.inspect.SUSPECT_LOADERS`).

Example::

    >>> import torch
    >>> s = Suspect("toy", "clip", 4, lambda x: x[:, 0, 0, :2] + 0.1, class_features=lambda names: torch.eye(2))
    >>> imgs = torch.zeros(3, 3, 4, 4)
    >>> mask, pattern = torch.zeros(4, 4), torch.ones(3, 4, 4)
    >>> mask[0, 1] = 1  # the trigger lights pixel (0, 1): the embedding of "b"
    >>> suspected_target(s, imgs, ["a", "b"], mask, pattern)["suspected_target"]
    'b'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from .decree import stamp


@dataclass
class Suspect:
    """``name``, ``kind`` (``clip`` | ``ssl``), input ``size`` (``None``: any), ``embed`` (images in [0, 1] →
    embeddings), optional ``class_features`` (class names → (C,D) text embeddings), ``device`` and ``info`` (what
    the loader knows: format, preprocessing, config)."""

    name: str
    kind: str
    size: Optional[int]
    embed: Callable[[torch.Tensor], torch.Tensor]
    class_features: Optional[Callable[[Sequence[str]], torch.Tensor]] = None
    device: torch.device = torch.device("cpu")
    info: dict[str, Any] = field(default_factory=dict)


@torch.no_grad()
def suspected_target(suspect: Suspect, images: torch.Tensor, class_names: Sequence[str], mask: torch.Tensor,
                     pattern: torch.Tensor, batch_size: int = 256) -> dict[str, Any]:
    """The class zero-shot predicts most often once the inverted trigger is pasted on ``images`` (uint8 or float
    in [0, 1], (N,3,H,W)), with its share among the triggered images and among the clean ones."""
    if suspect.class_features is None:
        return {"suspected_target": None, "note": "no zero-shot classifier (an image tower without its text tower)"}
    if not class_names or len(images) == 0:
        return {"suspected_target": None, "note": "no labelled images with class names to paste the trigger on"}
    text = F.normalize(suspect.class_features(list(class_names)).float(), dim=-1).to(suspect.device)

    def predict(x: torch.Tensor) -> torch.Tensor:
        return (F.normalize(suspect.embed(x).float(), dim=-1) @ text.t()).argmax(1).cpu()

    x_all = images.float().div(255) if images.dtype == torch.uint8 else images.float()
    m, p = mask.to(suspect.device), pattern.to(suspect.device)
    clean, trig = [], []
    for s in range(0, len(x_all), batch_size):
        x = x_all[s:s + batch_size].to(suspect.device)
        clean.append(predict(x))
        trig.append(predict(stamp(x, m, p)))
    c, t = torch.cat(clean), torch.cat(trig)
    names = list(class_names)
    k = len(names)
    counts = torch.bincount(t, minlength=k)
    top = int(counts.argmax())
    return {"suspected_target": names[top], "triggered_share": float(counts[top]) / len(t),
            "clean_share": float((c == top).float().mean()), "images": len(t),
            "triggered_shares": {names[i]: round(float(counts[i]) / len(t), 4) for i in range(k)}}


def mask_overlap(mask: torch.Tensor, region: torch.Tensor) -> dict[str, float]:
    """How much of the inverted mask's mass lies where the real trigger can be (``region``: bool (H,W)), against
    chance (the region's share of the image)."""
    m = mask.float()
    r = region.to(m.device).bool()
    total = float(m.sum())
    return {"mass_in_trigger_region": float(m[r].sum()) / total if total > 0 else 0.0,
            "region_share_of_image": float(r.float().mean())}
