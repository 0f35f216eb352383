"""SimCLR (Chen et al., ICML 2020): NT-Xent loss between two augmented views.

Paper defaults: projection MLP 2 layers (hidden = feature dim, output 128), temperature 0.5 for CIFAR
(0.1 for ImageNet with large batches), LARS, batch 512–4096.

Example::

    >>> import torch
    >>> from clpoison.methods.simclr import nt_xent_loss
    >>> z1, z2 = torch.randn(8, 16), torch.randn(8, 16)
    >>> loss = nt_xent_loss(z1, z2, temperature=0.5)
    >>> loss.ndim
    0
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..models.heads import mlp_head
from ..utils.dist import all_gather_with_grad, rank, world_size
from .base import METHODS, Method, MethodParams, check_positive


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """Normalised-temperature cross entropy over 2N views; positives are (i, i+N), the rest of the batch negatives.

    Distributed (``torch.distributed`` initialised with more than one process): the views of every rank are
    gathered with gradient and this rank's 2n rows are scored against all 2N columns, positives offset by
    ``rank × n``; the mean over ranks of this loss (what DDP's gradient averaging optimises) is the single-process
    loss on the global batch, and so are its gradients.

    Raises ``ValueError`` if the two views do not have the same shape.
    """
    if z1.shape != z2.shape:
        raise ValueError(f"nt_xent_loss: views must have the same shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if world_size() > 1:
        return _nt_xent_distributed(z1, z2, temperature)
    n = z1.shape[0]
    z = torch.cat([z1, z2], 0)
    z = F.normalize(z.float() if z.dtype in (torch.float16, torch.bfloat16) else z, dim=1)  # AMP: loss in fp32
    sim = z @ z.t() / temperature
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


def _nt_xent_distributed(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    n, r = z1.shape[0], rank()
    big = z1.shape[0] * world_size()
    z1 = F.normalize(z1.float(), dim=1)
    z2 = F.normalize(z2.float(), dim=1)
    cols = torch.cat([all_gather_with_grad(z1), all_gather_with_grad(z2)], 0)  # (2N, D): all view 1, all view 2
    rows = torch.cat([z1, z2], 0)  # (2n, D): this rank's view 1, then view 2
    sim = rows @ cols.t() / temperature
    own = torch.arange(n, device=z1.device) + r * n  # global index of this rank's samples
    self_col = torch.cat([own, own + big])
    sim[torch.arange(2 * n, device=z1.device), self_col] = float("-inf")
    target = torch.cat([own + big, own])
    return F.cross_entropy(sim, target)


@dataclass
class SimCLRParams(MethodParams):
    temperature: float = 0.5
    proj_hidden_dim: int = 0  # 0 → the backbone's feature dim
    proj_dim: int = 128
    proj_layers: int = 2

    def __post_init__(self) -> None:
        check_positive(self, "temperature", "proj_dim", "proj_layers")


@METHODS.register("simclr")
class SimCLR(Method):
    name = "simclr"
    Params = SimCLRParams

    def __init__(self, backbone: nn.Module, params: SimCLRParams = SimCLRParams()) -> None:
        super().__init__()
        self.params = params
        self.backbone = backbone
        d = backbone.feature_dim
        self.projector = mlp_head(d, params.proj_hidden_dim or d, params.proj_dim, params.proj_layers)

    @property
    def encoder(self) -> nn.Module:
        return self.backbone

    def loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float], dict[str, Any]]:
        v1, v2 = batch["views"]
        z = self.projector(self.backbone(torch.cat([v1, v2], 0)))
        z1, z2 = z.chunk(2)
        return nt_xent_loss(z1, z2, self.params.temperature), {}, {}
