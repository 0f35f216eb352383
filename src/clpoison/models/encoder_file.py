"""Encoder files: the trained image encoder as ``encoder.safetensors`` (weights only, no code) plus
``encoder.json`` (architecture and preprocessing), the pair every run writes and :func:`load_encoder` reads.

``encoder.json`` holds ``format`` (``"clpoison-encoder"``), ``format_version`` (1), ``arch``, ``width``,
``stem_stride``, ``stem`` (``"cifar"``: 3×3 conv, or ``"imagenet"``: 7×7 stride-2 conv + max-pool),
``feature_dim``, ``preprocessing`` (``size``, ``mean``, ``std``: uint8 RGB / 255, bilinear resize to
``size`` × ``size``, ``(x - mean) / std``), ``method`` and, for a run, ``config`` (the run's config snapshot, so
the data it was trained on can be rebuilt). safetensors stores tensors only, so reading a file never runs code.

The image tower of a **pretrained CLIP** (a run with ``model.init``) has no ``width`` / ``stem_stride`` / ``stem``:
its ``arch`` is ``"pretrained-clip"`` and ``pretrained`` names the model it started from (``format``:
``huggingface`` | ``open_clip``, ``path``, ``image_tower``: its architecture); :func:`load_encoder` reads that
architecture from the path again (:func:`clpoison.models.pretrained.pretrained_visual`) and loads the file's weights.

:func:`load_encoder` also reads foreign weights through :mod:`clpoison.models.foreign` (a torchvision-layout
ResNet state dict in a ``.pt``/``.pth``/``.safetensors`` file, loaded with ``weights_only=True``).

Example::

    >>> import tempfile, torch
    >>> from clpoison.models import build_backbone
    >>> d = tempfile.mkdtemp()
    >>> net = build_backbone("resnet10", 4, 2)
    >>> _ = save_encoder(d, net, {"arch": "resnet10", "width": 4, "stem_stride": 2},
    ...                  {"size": 32, "mean": [0.5] * 3, "std": [0.25] * 3})
    >>> enc, spec = load_encoder(d + "/encoder.safetensors")
    >>> spec["feature_dim"], enc(torch.zeros(1, 3, 32, 32)).shape
    (32, torch.Size([1, 32]))
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from torch import nn

from ..errors import DataError
from ..run_folder import ENCODER, ENCODER_SPEC, run_file
from ..utils.io import atomic_write_bytes, atomic_write_json
from . import build_backbone, check_backbone
from .foreign import EXPECTED as EXPECTED_FOREIGN, imagenet_stem, to_clpoison, torch_load_weights, unwrap_state

WEIGHTS_NAME = ENCODER
SPEC_NAME = ENCODER_SPEC
FORMAT = "clpoison-encoder"


def save_encoder(folder: str | Path, encoder: nn.Module, model: Mapping[str, Any], preprocessing: Mapping[str, Any],
                 method: str = "", config: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """Write ``folder/encoder.safetensors`` and ``folder/encoder.json`` atomically; returns the spec written.

    ``model`` is the backbone config (``arch``, ``width``, ``stem_stride``); ``preprocessing`` has ``size``,
    ``mean`` and ``std``. An encoder that carries ``pretrained_source`` (the image tower of a pretrained CLIP) is
    recorded by it instead of ``model``."""
    from safetensors.torch import save

    folder = Path(folder)
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    source = getattr(encoder, "pretrained_source", None)
    arch = dict(source) if source else {
        "arch": str(model.get("arch", "resnet18")), "width": int(model.get("width", 64)),
        "stem_stride": int(model.get("stem_stride", 1)), "stem": str(model.get("stem", "cifar"))}
    spec = {"format": FORMAT, "format_version": 1, **arch, "feature_dim": int(getattr(encoder, "feature_dim", 0)),
            "preprocessing": {"size": int(preprocessing["size"]), "mean": [float(x) for x in preprocessing["mean"]],
                              "std": [float(x) for x in preprocessing["std"]]},
            "method": method, "weights": WEIGHTS_NAME}
    if config is not None:
        spec["config"] = dict(config)
    atomic_write_bytes(folder / WEIGHTS_NAME, save(state, metadata={"format": FORMAT}))
    atomic_write_json(folder / SPEC_NAME, spec)
    return spec


def encoder_from_spec(spec: Mapping[str, Any], state: Mapping[str, torch.Tensor], what: str) -> nn.Module:
    """The backbone ``spec`` describes with ``state`` loaded (strict); one :class:`DataError` line if they differ."""
    from .pretrained import PRETRAINED_ARCH, pretrained_visual

    if spec.get("arch") == PRETRAINED_ARCH:
        net = pretrained_visual(spec.get("pretrained") or {}, what)
        try:
            net.load_state_dict(dict(state), strict=True)
        except RuntimeError as e:
            raise DataError(f"{what}: the weights do not fit the pretrained CLIP's image tower "
                            f"({str(e).splitlines()[0][:160]})") from None
        return net.eval()
    try:
        arch, width, stride = str(spec["arch"]), int(spec["width"]), int(spec.get("stem_stride", 1))
        check_backbone(arch, width, stride, "encoder.json")
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{what}: encoder.json lacks a valid arch/width/stem_stride ({e})") from None
    except Exception as e:  # ConfigError of an unknown arch
        raise DataError(f"{what}: {e}") from None
    net = build_backbone(arch, width, stride)
    if spec.get("stem", "cifar") == "imagenet":
        imagenet_stem(net, width)
    try:
        net.load_state_dict(dict(state), strict=True)
    except RuntimeError as e:
        raise DataError(f"{what}: the weights do not fit {arch} width {width} ({str(e).splitlines()[0]})") from None
    return net.eval()


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise DataError(f"encoder '{path}' is not a readable safetensors file ({type(e).__name__})") from None


def load_encoder(path: str | Path, model: Optional[Mapping[str, Any]] = None) -> tuple[nn.Module, dict[str, Any]]:
    """``(encoder, spec)`` of an encoder file, on the CPU in eval mode.

    Accepts a clpoison ``encoder.safetensors`` (with ``encoder.json`` beside it, or a folder holding both) and a
    torchvision-layout ResNet state dict (``.pt``/``.pth``/``.safetensors`` without ``encoder.json``; see
    :mod:`clpoison.models.foreign`; ``model`` may set its ``stem_stride``). Anything else is one
    :class:`DataError` line."""
    path = run_file(path, WEIGHTS_NAME)
    if not path.exists():
        raise DataError(f"encoder '{path}' does not exist; pass encoder.safetensors, its folder, or a .pt/.pth state dict")
    spec_path = path.with_name(SPEC_NAME)
    if path.suffix == ".safetensors" and spec_path.exists():
        try:
            spec = json.loads(spec_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"'{spec_path}' is not JSON ({type(e).__name__})") from None
        if not isinstance(spec, dict) or spec.get("format") != FORMAT:
            raise DataError(f"'{spec_path}' is not a clpoison encoder.json (format must be '{FORMAT}')")
        return encoder_from_spec(spec, _read_safetensors(path), f"encoder '{path}'"), spec
    state = _read_safetensors(path) if path.suffix == ".safetensors" else None
    return load_foreign(path, state, model or {})


def load_foreign(path: Path, state: Optional[Mapping[str, torch.Tensor]], model: Mapping[str, Any]
                 ) -> tuple[nn.Module, dict[str, Any]]:
    """``(encoder, spec)`` of a torchvision-layout ResNet or open_clip model state dict at ``path`` (``state`` if
    already read); ``model.stem_stride`` sets a CIFAR stem's stride (default 1), ``model.heads`` /
    ``model.activation`` an open_clip tower's. One :class:`DataError` line otherwise."""
    obj = unwrap_state(torch_load_weights(path) if state is None else dict(state))
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise DataError(f"encoder '{path}' holds a {type(obj).__name__} that is not a state dict; expected a {EXPECTED_FOREIGN}")
    from .openclip_visual import from_openclip, is_openclip

    if is_openclip(obj):
        try:
            return from_openclip(obj, model)
        except ValueError as e:
            raise DataError(f"encoder '{path}' (open_clip layout): {e}") from None
    try:
        mapped, spec = to_clpoison(obj)
    except ValueError as e:
        raise DataError(f"encoder '{path}': {e}") from None
    spec["stem_stride"] = 2 if spec["stem"] == "imagenet" else int(model.get("stem_stride", 1))
    net = encoder_from_spec(spec, mapped, f"encoder '{path}'")
    spec.update(format="torchvision-resnet", feature_dim=int(net.feature_dim), method="")
    return net, spec
