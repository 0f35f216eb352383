"""Small operations on uint8 (3,h,w) images and (h,w) float alpha masks (CPU tensors) used to build poisoned
composites: antialiased bilinear resizing and the 3×3 Gaussian feathering of an object's alpha.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def resize_image(img: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Bilinear (antialiased when shrinking) resize of a uint8 (3,h,w) image."""
    if tuple(img.shape[1:]) == (h, w):
        return img.clone()
    x = F.interpolate(img.unsqueeze(0).float(), size=(int(h), int(w)), mode="bilinear", antialias=True,
                      align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8)[0]


def resize_mask(mask: torch.Tensor, h: int, w: int) -> torch.Tensor:
    x = F.interpolate(mask[None, None].float(), size=(int(h), int(w)), mode="bilinear", antialias=True,
                      align_corners=False)
    return x[0, 0].clamp(0, 1)


def blur_alpha(alpha: torch.Tensor) -> torch.Tensor:
    """3×3 Gaussian blur (σ≈1; PIL ``GaussianBlur(radius=1)``) of a (h,w) alpha, edges replicated."""
    k1 = torch.tensor([0.27901, 0.44198, 0.27901])
    k = (k1[:, None] * k1[None, :])[None, None]
    a = F.pad(alpha[None, None], (1, 1, 1, 1), mode="replicate")
    return F.conv2d(a, k)[0, 0].clamp(0, 1)
