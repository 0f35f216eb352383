"""A small ConvNet: four conv-BN-ReLU(-max-pool) blocks of widths w, 2w, 4w, 8w and a global average pool."""

from __future__ import annotations

import torch
from torch import nn


class ConvNet(nn.Module):
    def __init__(self, width: int = 32, stem_stride: int = 1, in_channels: int = 3) -> None:
        super().__init__()
        layers = []
        ch = in_channels
        for i in range(4):
            out = width * 2**i
            layers += [
                nn.Conv2d(ch, out, 3, stem_stride if i == 0 else 1, 1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
            ]
            if i < 3:
                layers.append(nn.MaxPool2d(2))
            ch = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = ch

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.features(x)), 1)
