"""Adapter for **open_clip model state dicts**: the image tower (``visual.*``) of an open_clip CLIP becomes a
clpoison image encoder with the same weights, so its features — and the backdoor ASR / targeted success of a
classifier fitted on them — can be scored by ``clpoison evaluate``.

Two towers are rebuilt, with open_clip's parameter names so the weights load as they are (strict):

- **ModifiedResNet** (``RN50``, ``RN101``, ``RN50x4``, …; Radford et al. 2021, §2.4): three 3×3 stem convolutions
  and a 2×2 average pool, bottlenecks whose stride is an average pool before ``conv3`` (and before the 1×1
  shortcut), and an attention pool (``attnpool.{q,k,v,c}_proj``, a learned positional embedding for
  ``(image_size/32)² + 1`` tokens, the mean token as the query). Detected by ``visual.attnpool.c_proj.weight``.
- **VisionTransformer** (``ViT-B-32``, ``ViT-B-16``, …): patch convolution ``conv1``, ``class_embedding``,
  ``positional_embedding``, ``ln_pre``, pre-norm residual blocks ``transformer.resblocks.{i}.{ln_1, attn,
  ln_2, mlp.c_fc, mlp.c_proj}`` (optional LayerScale ``ls_1/ls_2``), ``ln_post`` on every token, the class token
  pooled, then ``proj``. Detected by ``visual.class_embedding``.

What the state dict does not record is a parameter (``model.*`` in ``clpoison evaluate``): ``heads`` (default
width / 64, open_clip's ``head_width``), ``activation`` (``gelu``, open_clip's default, or ``quick_gelu`` for
OpenAI's original weights and the ``-quickgelu`` configs). The image size follows from the positional embedding;
preprocessing is open_clip's (OpenAI mean / std, resize to that size; open_clip resizes the short side and
centre-crops, clpoison resizes the whole image — the same on square images).

The text tower is :mod:`clpoison.models.openclip_text` (both towers with a tokenizer: :mod:`clpoison.models.pretrained`).
Not adapted: timm / Hugging Face image towers (``visual.trunk.*``), attentional-pooling ViTs (CoCa) — each refused with one line naming it.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Mapping

import torch
from torch import nn
from torch.nn import functional as F

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
LAYOUT = "open_clip model state dict (visual.conv1.weight, visual.attnpool.* or visual.class_embedding, ...)"


class _Bottleneck(nn.Module):
    def __init__(self, in_ch: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * 4
        self.conv1, self.bn1 = nn.Conv2d(in_ch, planes, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False), nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = nn.Conv2d(planes, out, 1, bias=False), nn.BatchNorm2d(out)
        self.stride = stride
        self.downsample = None
        if stride > 1 or in_ch != out:  # open_clip's names: "-1" the (parameter-free) pool, "0" conv, "1" BN
            self.downsample = nn.Sequential(OrderedDict([("-1", nn.AvgPool2d(stride) if stride > 1 else nn.Identity()),
                                                         ("0", nn.Conv2d(in_ch, out, 1, bias=False)),
                                                         ("1", nn.BatchNorm2d(out))]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        if self.stride > 1:
            y = F.avg_pool2d(y, self.stride)
        y = self.bn3(self.conv3(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class _AttentionPool(nn.Module):
    def __init__(self, tokens: int, dim: int, heads: int, out_dim: int) -> None:
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.zeros(tokens, dim))
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.c_proj = nn.Linear(dim, out_dim)
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(2).transpose(1, 2)  # N, HW, C
        x = torch.cat([x.mean(1, keepdim=True), x], 1) + self.positional_embedding
        n, t, c = x.shape
        h = self.heads
        q = self.q_proj(x[:, :1]).view(n, 1, h, c // h).transpose(1, 2)  # only the mean token's output is used
        k = self.k_proj(x).view(n, t, h, c // h).transpose(1, 2)
        v = self.v_proj(x).view(n, t, h, c // h).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, c)
        return self.c_proj(out)


class OpenClipModifiedResNet(nn.Module):
    """open_clip's ``ModifiedResNet`` image tower (parameter names as open_clip's ``visual.*``, prefix removed)."""

    def __init__(self, layers: tuple[int, ...], width: int, output_dim: int, heads: int, image_size: int) -> None:
        super().__init__()
        half = width // 2
        self.conv1, self.bn1 = nn.Conv2d(3, half, 3, 2, 1, bias=False), nn.BatchNorm2d(half)
        self.conv2, self.bn2 = nn.Conv2d(half, half, 3, 1, 1, bias=False), nn.BatchNorm2d(half)
        self.conv3, self.bn3 = nn.Conv2d(half, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width)
        in_ch = width
        for i, n in enumerate(layers):
            planes = width * 2 ** i
            blocks = [_Bottleneck(in_ch, planes, 1 if i == 0 else 2)]
            blocks += [_Bottleneck(planes * 4, planes) for _ in range(1, n)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            in_ch = planes * 4
        self.attnpool = _AttentionPool((image_size // 32) ** 2 + 1, width * 32, heads, output_dim)
        self.feature_dim = output_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.avg_pool2d(F.relu(self.bn3(self.conv3(x))), 2)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.attnpool(x)


class _QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class _LayerScale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp: int, act: str, layer_scale: bool) -> None:
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(dim, mlp)),
                                              ("gelu", _QuickGELU() if act == "quick_gelu" else nn.GELU()),
                                              ("c_proj", nn.Linear(mlp, dim))]))
        self.ls_1 = _LayerScale(dim) if layer_scale else nn.Identity()
        self.ls_2 = _LayerScale(dim) if layer_scale else nn.Identity()

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        y = self.ln_1(x)
        x = x + self.ls_1(self.attn(y, y, y, need_weights=False, attn_mask=attn_mask)[0])
        return x + self.ls_2(self.mlp(self.ln_2(x)))


class _Blocks(nn.Module):
    def __init__(self, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(blocks)


class OpenClipViT(nn.Module):
    """open_clip's ``VisionTransformer`` image tower with class-token pooling (names as open_clip's ``visual.*``)."""

    def __init__(self, width: int, layers: int, heads: int, patch: int, grid: int, mlp: int,
                 output_dim: int | None, act: str = "gelu", layer_scale: bool = False, ln_pre: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, patch, patch, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.positional_embedding = nn.Parameter(torch.zeros(grid * grid + 1, width))
        self.ln_pre = nn.LayerNorm(width) if ln_pre else nn.Identity()
        self.transformer = _Blocks([_Block(width, heads, mlp, act, layer_scale) for _ in range(layers)])
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.zeros(width, output_dim)) if output_dim else None
        self.feature_dim = output_dim or width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_embedding.expand(x.shape[0], 1, -1).to(x.dtype), x], 1) + self.positional_embedding
        x = self.ln_pre(x)
        for block in self.transformer.resblocks:
            x = block(x)
        x = self.ln_post(x)[:, 0]
        return x if self.proj is None else x @ self.proj


def is_openclip(state: Mapping[str, Any]) -> bool:
    """Whether a (prefix-free) state dict is an open_clip model's (it has an image tower under ``visual.``)."""
    return any(isinstance(k, str) and k.startswith("visual.") for k in state)


def _count(state: Mapping[str, torch.Tensor], pattern: str) -> int:
    import re

    found = {int(m[1]) for k in state if (m := re.fullmatch(pattern, k))}
    return max(found) + 1 if found else 0


def from_openclip(state: Mapping[str, torch.Tensor], model: Mapping[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
    """``(image encoder, spec)`` from an open_clip model state dict (``visual.*`` keys; the text tower's keys are
    ignored). ``model`` may set ``heads`` and ``activation``. Raises ValueError naming what does not fit."""
    vis = {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
    act = str(model.get("activation", "gelu"))
    if act not in ("gelu", "quick_gelu"):
        raise ValueError(f"model.activation '{act}' is not gelu or quick_gelu")
    if "attnpool.c_proj.weight" in vis:
        layers = tuple(_count(vis, rf"layer{i}\.(\d+)\..+") for i in range(1, 5))
        width = int(vis["conv3.weight"].shape[0])
        tokens = int(vis["attnpool.positional_embedding"].shape[0])
        size = int(round(math.sqrt(tokens - 1))) * 32
        heads = int(model.get("heads", width * 32 // 64))
        net: nn.Module = OpenClipModifiedResNet(layers, width, int(vis["attnpool.c_proj.weight"].shape[0]), heads, size)
        spec = {"arch": "openclip-modified-resnet", "layers": list(layers), "width": width, "heads": heads}
    elif "class_embedding" in vis:
        if any(k.startswith(("attn_pool", "trunk.")) for k in vis):
            raise ValueError("attentional-pooling (CoCa) image towers are not adapted; only class-token ViTs")
        width = int(vis["class_embedding"].shape[0])
        patch = int(vis["conv1.weight"].shape[-1])
        grid = int(round(math.sqrt(vis["positional_embedding"].shape[0] - 1)))
        size = grid * patch
        layers = _count(vis, r"transformer\.resblocks\.(\d+)\..+")
        heads = int(model.get("heads", max(1, width // 64)))
        proj = vis.get("proj")
        net = OpenClipViT(width, layers, heads, patch, grid, int(vis["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]),
                          int(proj.shape[1]) if proj is not None else None, act,
                          "transformer.resblocks.0.ls_1.gamma" in vis, "ln_pre.weight" in vis)
        spec = {"arch": "openclip-vit", "layers": layers, "width": width, "heads": heads, "patch": patch,
                "activation": act}
    elif any(k.startswith("trunk.") for k in vis):
        raise ValueError("timm image towers (visual.trunk.*) are not adapted; export the trunk with timm instead")
    else:
        raise ValueError(f"no visual.attnpool.* or visual.class_embedding: not a {LAYOUT}")
    if width % heads:
        raise ValueError(f"model.heads={heads} does not divide the width {width}")
    expected = net.state_dict()
    missing = [k for k in expected if k not in vis]
    extra = [k for k in vis if k not in expected]
    shape = [k for k in expected if k in vis and tuple(vis[k].shape) != tuple(expected[k].shape)]
    for what, keys in (("missing", missing), ("unexpected", extra), ("of another shape", shape)):
        if keys:
            raise ValueError(f"the visual.* weights do not fit {spec['arch']}: {len(keys)} key(s) {what}, first "
                             f"'visual.{keys[0]}'")
    net.load_state_dict(vis, strict=True)
    spec.update(format="open_clip-visual", feature_dim=int(net.feature_dim), method="clip", image_size=size,
                preprocessing={"size": size, "mean": list(OPENAI_MEAN), "std": list(OPENAI_STD)})
    return net.eval(), spec
