"""SafeCLIP's training objective (official ``src/train.py``): the unimodal term, the cross-augmented CLIP term,
and :class:`SafeCLIPMethod`, which wraps a CLIP method and picks the term by the batch's ``phase``.

Example::

    >>> import torch
    >>> z = torch.nn.functional.normalize(torch.randn(8, 16), dim=1)
    >>> float(inmodal_term(z, z, torch.tensor(100.0))) < 1e-3  # identical views: a near-zero unimodal loss
    True
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F

from ...methods.base import Method
from ...methods.clip_wrapper import WrappedCLIP
from ...methods.clip import clip_loss
from ...methods.simclr import nt_xent_loss
from ...utils.dist import all_gather_nograd, all_gather_with_grad, rank
from .memory_bank import MemoryBank
from .safeclip_params import SafeCLIPParams


def inmodal_term(z1: torch.Tensor, z2: torch.Tensor, scale: torch.Tensor, bank: Optional[MemoryBank] = None,
                 kind: str = "official") -> torch.Tensor:
    """Unimodal contrastive term: ``CE(s·z2·NN(z1)ᵀ, diag)`` (official) or NT-Xent at temperature 1/s."""
    anchor = bank.nearest(z1) if bank is not None else z1
    if kind == "nt_xent":
        return nt_xent_loss(anchor, z2, 1.0 / scale)
    logits = scale * z2.float() @ all_gather_with_grad(anchor.float()).t()  # several processes: every rank's anchors
    return F.cross_entropy(logits, torch.arange(len(z1), device=z1.device) + rank() * len(z1))


def cross_aug_clip_loss(i1: torch.Tensor, i2: torch.Tensor, t1: torch.Tensor, t2: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Official ``cross_aug`` CLIP loss: ½[CE(s·I₁T₂ᵀ) + CE(s·T₁I₂ᵀ)] (several processes: local rows against the
    columns of every rank, gathered with gradient, as :func:`~clpoison.methods.clip.clip_loss`)."""
    labels = torch.arange(len(i1), device=i1.device) + rank() * len(i1)
    return 0.5 * (F.cross_entropy(scale * i1.float() @ all_gather_with_grad(t2.float()).t(), labels)
                  + F.cross_entropy(scale * t1.float() @ all_gather_with_grad(i2.float()).t(), labels))



class SafeCLIPMethod(WrappedCLIP):
    """Wraps a trained-from-scratch :class:`~clpoison.methods.clip.CLIP`: dispatches on ``batch["phase"]``.

    Its state dict *is* the CLIP's (the memory banks are not saved), so a SafeCLIP checkpoint loads wherever a CLIP
    checkpoint does (``clpoison evaluate``, ``clpoison scan``)."""

    name = "safeclip"
    ddp_find_unused_parameters = True  # the phases use different parts of the model

    def __init__(self, clip: Method, params: SafeCLIPParams) -> None:
        super().__init__(clip)
        self.params = params
        dim = clip.params.embed_dim
        self.image_bank = MemoryBank(params.memory_bank_size, dim) if params.memory_bank else None
        self.text_bank = MemoryBank(params.memory_bank_size, dim) if params.memory_bank else None

    def loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float], dict[str, Any]]:
        """The phase's loss (pure); with ``memory_bank`` the unimodal anchors go to ``aux`` and are pushed into the
        banks by :meth:`update_state` after the optimiser step."""
        m = self.model
        scale = m.scale()
        two = "images2" in batch
        if two:
            i1, i2 = m.encode_image(torch.cat([batch["images"], batch["images2"]])).chunk(2)
            t1, t2 = m.encode_text(torch.cat([batch["tokens"], batch["tokens2"]])).chunk(2)
        if batch["phase"] == "inmodal":
            kind = self.params.inmodal_loss
            loss = 0.5 * (inmodal_term(i1, i2, scale, self.image_bank, kind) + inmodal_term(t1, t2, scale, self.text_bank, kind))
            aux = {} if self.image_bank is None else {  # every rank pushes every rank's anchors: one bank
                "image_anchors": all_gather_nograd(i1.detach()), "text_anchors": all_gather_nograd(t1.detach())}
            return loss, {"logit_scale": float(scale.detach()), "safeclip_inmodal": 1.0}, aux
        if two:
            loss = cross_aug_clip_loss(i1, i2, t1, t2, scale)
        else:
            img, txt, _ = m(batch["images"], batch["tokens"])
            loss = clip_loss(img, txt, scale)
        return loss, {"logit_scale": float(scale.detach()), "safeclip_inmodal": 0.0}, {}

    def update_state(self, aux: dict[str, Any]) -> None:
        if "image_anchors" in aux:
            self.image_bank.push(aux["image_anchors"])
            self.text_bank.push(aux["text_anchors"])
