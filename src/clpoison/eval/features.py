"""Frozen-encoder feature extraction on uint8 images (batched, on the device, eval mode, no grad)."""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from ..data.augment import EvalTransform


@torch.no_grad()
def extract_features(
    encoder: nn.Module,
    images: torch.Tensor,
    transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    batch_size: int = 512,
    device: Optional[torch.device] = None,
    channels_last: bool = False,
) -> torch.Tensor:
    """Features (N, D) in float32 on the CPU for uint8 images (N,3,H,W) — a tensor, or a streamed split's
    ``images``, decoded batch by batch (:mod:`clpoison.data.split_info`); ``transform`` defaults to
    :class:`EvalTransform` at the images' own size with CIFAR normalisation."""
    device = device or next(encoder.parameters()).device
    transform = transform or EvalTransform(images.shape[-1]).to(device)
    was_training = encoder.training
    encoder.eval()
    out = []
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for s in range(0, len(images), batch_size):
        batch = images[s : s + batch_size]  # streamed: only this batch is decoded
        x = transform(batch.to(device, non_blocking=True)).contiguous(memory_format=fmt)
        out.append(encoder(x).float().cpu())
    encoder.train(was_training)
    if not out:
        return torch.zeros(0, 0)
    return torch.cat(out)
