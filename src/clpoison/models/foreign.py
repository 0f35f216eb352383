"""Adapters for encoders trained elsewhere: a **torchvision-layout ResNet state dict** becomes a clpoison
:class:`~clpoison.models.resnet.ResNet` with the same weights; an **open_clip model state dict** (``visual.*``
keys) is routed to :mod:`clpoison.models.openclip_visual`; :func:`clpoison.models.encoder_file.load_foreign` reads the file
and picks the adapter.

Accepted layout (the only one): the keys of ``torchvision.models.resnet{18,34,50}`` and of the CIFAR variants
solo-learn and lightly build from it — ``conv1.weight``, ``bn1.*``, ``layer{1..4}.{j}.conv{1,2[,3]}.weight``,
``layer{i}.{j}.bn{1,2[,3]}.*``, ``layer{i}.{j}.downsample.{0,1}.*``; ``fc.*`` is dropped. Keys may carry one
prefix ``module.``, ``backbone.`` or ``encoder.``, and the dict may be wrapped as ``{"state_dict": ...}`` or
``{"model": ...}`` (Lightning / solo-learn checkpoints). A 7×7 ``conv1`` gives the ImageNet stem (stride 2 +
3×3 max-pool); a 3×3 one the CIFAR stem (stride ``model.stem_stride``, default 1). ``.pt``/``.pth`` files are read
with ``torch.load(weights_only=True)``: a pickle that would run code is refused with one line.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ..errors import DataError

LAYOUT = "torchvision ResNet state dict (conv1.weight, bn1.*, layer1.0.conv1.weight, ..., fc.*)"
EXPECTED = f"{LAYOUT}, or an open_clip model state dict (visual.*)"
_PREFIXES = ("module.", "backbone.", "encoder.")
_ARCHS = {(1, 1, 1, 1, False): "resnet10", (2, 2, 2, 2, False): "resnet18", (3, 4, 6, 3, False): "resnet34",
          (3, 4, 6, 3, True): "resnet50"}


def imagenet_stem(net: nn.Module, width: int) -> None:
    """Replace ``net``'s CIFAR stem by torchvision's (7×7 stride-2 conv, BN, ReLU, 3×3 stride-2 max-pool);
    parameter names stay ``stem.0.*`` / ``stem.1.*``."""
    net.stem = nn.Sequential(nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                             nn.MaxPool2d(3, 2, 1))


def unwrap_state(obj: Any) -> Any:
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if isinstance(obj, dict):
        for p in _PREFIXES:
            if obj and all(isinstance(k, str) and k.startswith(p) for k in obj if not str(k).startswith("fc.")):
                obj = {k[len(p):]: v for k, v in obj.items() if k.startswith(p)}
    return obj


def torch_load_weights(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise DataError(f"encoder '{path}' was refused: it holds objects other than tensors and plain types; "
                        "save a plain state dict (torch.save(model.state_dict(), PATH))") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, AttributeError, KeyError) as e:
        raise DataError(f"encoder '{path}' cannot be read ({type(e).__name__}); expected a {EXPECTED}") from None


def to_clpoison(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(state dict, model spec)``: torchvision ResNet names mapped to clpoison's ``stem.*`` / ``stages.*``;
    raises ValueError naming the first key that does not fit."""
    out: dict[str, torch.Tensor] = {}
    blocks: dict[int, int] = {}
    bottleneck = False
    for key, v in state.items():
        if key.startswith("fc."):
            continue
        m = re.fullmatch(r"(conv1|bn1)\.(.+)", key)
        if m:
            out[f"stem.{0 if m[1] == 'conv1' else 1}.{m[2]}"] = v
            continue
        m = re.fullmatch(r"layer([1-4])\.(\d+)\.(conv[123]|bn[123]|downsample\.[01])\.(.+)", key)
        if not m:
            raise ValueError(f"key '{key}' is not part of a {LAYOUT}")
        i, j, part, rest = int(m[1]) - 1, int(m[2]), m[3], m[4]
        blocks[i] = max(blocks.get(i, 0), j + 1)
        bottleneck = bottleneck or part == "conv3"
        part = part.replace("downsample", "shortcut")
        out[f"stages.{i}.{j}.{part}.{rest}"] = v
    conv = out.get("stem.0.weight")
    if conv is None or conv.ndim != 4 or sorted(blocks) != [0, 1, 2, 3]:
        raise ValueError(f"conv1.weight or layer1..layer4 missing; expected a {LAYOUT}")
    arch = _ARCHS.get((*[blocks[i] for i in range(4)], bottleneck))
    if arch is None:
        raise ValueError(f"blocks per stage {[blocks[i] for i in range(4)]} match no resnet10/18/34/50")
    spec = {"arch": arch, "width": int(conv.shape[0]), "stem": "imagenet" if conv.shape[-1] == 7 else "cifar"}
    return out, spec
