"""CleanCLIP's fine-tuning loss (Bansal et al., ICCV 2023; official ``src/train.py::get_loss``).

With ``s`` the CLIP logit scale, ``y = arange(B)`` and L2-normalised image / text embeddings ``I``, ``T`` and those
of their augmented views ``Ĩ`` (a strong image augmentation) and ``T̃`` (an EDA caption)::

    L = w_clip · ½[CE(s·I·Tᵀ, y) + CE(s·T·Iᵀ, y)] + w_in · ½[CE(s·I·Ĩᵀ, y) + CE(s·T·T̃ᵀ, y)]

The in-modal terms are **one direction** each (rows: the original views, columns: the augmented views) and have
no same-view negatives — unlike SimCLR's NT-Xent, which scores each view against the other 2N−2 views. The
official weights are ``w_clip = w_in = 1`` (``--clip_weight``, ``--inmodal_weight``).

Under torchrun every term gathers its columns from every rank with gradient and offsets the labels by rank, as
:func:`~clpoison.methods.clip.clip_loss` does: with DDP's gradient averaging the loss and gradients are those of
one process on the global batch (tested, ``tests/test_ddp_losses.py``).

Example::

    >>> import torch
    >>> z = torch.nn.functional.normalize(torch.randn(8, 16), dim=1)
    >>> total, terms = cleanclip_loss(z, z, z, z, torch.tensor(100.0))  # every view identical: near zero
    >>> float(total) < 1e-3, sorted(terms)
    (True, ['clip', 'inmodal'])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..utils.dist import all_gather_with_grad, rank
from .clip import clip_loss


def inmodal_loss(z: torch.Tensor, z_aug: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``CE(s·z·z_augᵀ, diag)``: each original view classifies its own augmented view among the batch's augmented
    views (the official direction; one direction only). Distributed: the local rows against the augmented views of
    every rank, labels offset by this rank's position."""
    logits = scale * z.float() @ all_gather_with_grad(z_aug.float()).t()
    return F.cross_entropy(logits, torch.arange(len(z), device=z.device) + rank() * len(z))


def cleanclip_loss(image: torch.Tensor, text: torch.Tensor, image_aug: torch.Tensor, text_aug: torch.Tensor,
                   scale: torch.Tensor, clip_weight: float = 1.0, inmodal_weight: float = 1.0
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(w_clip·L_CLIP + w_in·L_inmodal, {"clip": L_CLIP, "inmodal": L_inmodal})`` of normalised (B, D) embeddings."""
    clip_term = clip_loss(image, text, scale)
    inmodal = 0.5 * (inmodal_loss(image, image_aug, scale) + inmodal_loss(text, text_aug, scale))
    return clip_weight * clip_term + inmodal_weight * inmodal, {"clip": clip_term, "inmodal": inmodal}
