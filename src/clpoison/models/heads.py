"""Projection and prediction heads (MLPs with BatchNorm), as in SimCLR, MoCo v2 and BYOL."""

from __future__ import annotations

from torch import nn


def mlp_head(in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 2, last_bn: bool = False) -> nn.Sequential:
    """``num_layers`` linear layers; BN+ReLU after every hidden layer, optional BN (no affine) on the output.

    SimCLR: 2 layers, hidden = feature dim, out 128. MoCo v2: 2 layers, hidden 2048, out 128, no BN.
    BYOL projector/predictor: 2 layers, hidden 4096, out 256.
    """
    if num_layers < 1:
        raise ValueError("num_layers must be >= 1")
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(num_layers - 1):
        layers += [nn.Linear(dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
        dim = hidden_dim
    layers.append(nn.Linear(dim, out_dim, bias=not last_bn))
    if last_bn:
        layers.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*layers)
