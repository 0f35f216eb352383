"""BYOL (Grill et al., NeurIPS 2020): online network + predictor regresses an EMA target network.

Paper defaults: projector and predictor MLPs with 4096 hidden units and 256 outputs; target EMA rate
τ = 1 − (1 − τ_base)(cos(π·progress) + 1)/2 with τ_base = 0.996; symmetric loss 2 − 2·cos; LARS, lr 0.2·batch/256,
wd 1.5e-6, 1000 epochs at batch 4096; asymmetric augmentation (blur 1.0/0.1, solarise 0/0.2).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..models.heads import mlp_head
from .base import METHODS, Method, MethodParams, check_positive


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of 2 − 2·cos(p, z); ``z`` is treated as a constant (target)."""
    p = F.normalize(p.float(), dim=1)
    z = F.normalize(z.detach().float(), dim=1)
    return (2 - 2 * (p * z).sum(1)).mean()


@dataclass
class BYOLParams(MethodParams):
    proj_hidden_dim: int = 4096
    proj_dim: int = 256
    pred_hidden_dim: int = 4096
    base_momentum: float = 0.996

    def __post_init__(self) -> None:
        check_positive(self, "proj_hidden_dim", "proj_dim", "pred_hidden_dim")
        if not 0 <= self.base_momentum <= 1:
            raise ConfigError(f"method.params.base_momentum={self.base_momentum} must be in [0, 1]")


@METHODS.register("byol")
class BYOL(Method):
    name = "byol"
    Params = BYOLParams

    def __init__(self, backbone: nn.Module, params: BYOLParams = BYOLParams()) -> None:
        super().__init__()
        self.params = params
        d = backbone.feature_dim
        self.backbone = backbone
        self.projector = mlp_head(d, params.proj_hidden_dim, params.proj_dim, 2)
        self.predictor = mlp_head(params.proj_dim, params.pred_hidden_dim, params.proj_dim, 2)
        self.target_backbone = copy.deepcopy(backbone)
        self.target_projector = copy.deepcopy(self.projector)
        for p in list(self.target_backbone.parameters()) + list(self.target_projector.parameters()):
            p.requires_grad_(False)
        self.register_buffer("momentum", torch.tensor(params.base_momentum))

    @property
    def encoder(self) -> nn.Module:
        return self.backbone

    def trainable_modules(self) -> list[nn.Module]:
        return [self.backbone, self.projector, self.predictor]

    def loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float], dict[str, Any]]:
        v1, v2 = batch["views"]
        x = torch.cat([v1, v2], 0)
        p1, p2 = self.predictor(self.projector(self.backbone(x))).chunk(2)
        with torch.no_grad():
            z1, z2 = self.target_projector(self.target_backbone(x)).chunk(2)
        loss = byol_loss(p1, z2) + byol_loss(p2, z1)
        return loss, {"tau": float(self.momentum)}, {}

    @torch.no_grad()
    def after_optimizer_step(self, progress: float) -> None:
        m = float(self.momentum)
        for online, target in ((self.backbone, self.target_backbone), (self.projector, self.target_projector)):
            for po, pt in zip(online.parameters(), target.parameters()):
                pt.mul_(m).add_(po.detach(), alpha=1 - m)
        base = self.params.base_momentum
        self.momentum.fill_(1 - (1 - base) * (math.cos(math.pi * min(1.0, progress)) + 1) / 2)
