"""Pretrained CLIPs from elsewhere behind **one model interface** — the one clpoison's own CLIP has — so that
``clpoison scan`` (model and ``--reference``), ``clpoison evaluate`` and ``model.init`` (the starting weights of a
run) take any of them:

* ``model.encode_image(x)`` / ``model.encode_text(tokens)``: L2-normalised embeddings; ``model(images, tokens)`` →
  ``(image emb, text emb, logit scale)`` (the CLIP loss); ``model.visual``: the image tower (projected features);
* ``tokenizer.encode(texts, context_length)`` → ``(N, L)`` int64 with 0 as padding (``vocab_size``,
  ``last_truncated``);
* ``preprocessing``: ``{"size", "mean", "std"}`` (the run's / scan's image size and normalisation follow it);
* ``context_length``: the most tokens the text tower takes; ``embed_dim``: the embedding size.

clpoison's own CLIP (:class:`clpoison.methods.clip.CLIP`: ``model``, ``tokenizer``, ``params.context_length``, the
run's ``augment``) already has it. The foreign formats (:func:`load_pretrained_clip`), read without executing code:

* a **Hugging Face CLIP directory** (:mod:`clpoison.models.hf_clip`; extra ``hf``);
* an **open_clip model state dict with both towers** (:mod:`clpoison.models.openclip_visual`,
  :mod:`clpoison.models.openclip_text`): a ``.safetensors`` file, or a ``.pt`` / ``.pth`` / ``.bin`` read with
  ``torch.load(weights_only=True)`` (a pickle that would run code is refused in one line), or a folder holding
  ``open_clip_model.safetensors`` / ``open_clip_pytorch_model.bin`` (the Hugging Face Hub layout of open_clip
  models). The tokenizer comes from files the user provides (:mod:`clpoison.models.clip_bpe`: ``tokenizer=`` or
  beside the weights). An ``open_clip_config.json`` beside the weights gives the heads, ``quick_gelu`` and mean /
  std; otherwise heads are width / 64, the activation ``gelu`` unless given, mean / std OpenAI's.

The image tower of a loaded model carries ``pretrained_source`` (:func:`pretrained_source`: the format, the path and
what the tower is), so the ``encoder.json`` of a run that fine-tuned it names the pretrained architecture and where
it came from (``arch: pretrained-clip``) instead of the run's nominal ``model.arch``, and
:func:`clpoison.models.encoder_file.load_encoder` rebuilds the tower from that path (:func:`pretrained_visual`).
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from torch import nn

from ..errors import ConfigError, DataError
from .clip_towers import PretrainedCLIP, TowersCLIP
from .foreign import torch_load_weights, unwrap_state

OPENCLIP_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
FORMATS = "a Hugging Face CLIP directory (config.json + model.safetensors) or an open_clip state dict with both towers"
PRETRAINED_ARCH = "pretrained-clip"  # encoder.json's arch of a pretrained CLIP's image tower


def openclip_weights(path: str | Path) -> Optional[Path]:
    """The open_clip weights file of ``path`` (the file itself, or the Hub layout's file in a folder), else None."""
    path = Path(path)
    if path.is_dir():
        return next((path / n for n in OPENCLIP_NAMES if (path / n).is_file()), None)
    return path if path.is_file() and path.suffix in WEIGHT_SUFFIXES else None


def read_openclip_state(path: Path) -> dict[str, torch.Tensor]:
    """The (unwrapped, prefix-free) state dict of an open_clip weights file, tensors only; one DataError line."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise DataError(f"'{path}' is not a readable safetensors file ({type(e).__name__})") from None
    else:
        obj = torch_load_weights(path)
    obj = unwrap_state(obj)
    if not isinstance(obj, dict):
        raise DataError(f"'{path}' holds a {type(obj).__name__}, not a state dict; expected {FORMATS}")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _keys(path: Path) -> frozenset[str]:
    """The state dict keys of a weights file (read once per file version: `evaluate` / `scan` ask several times)."""
    st = path.stat()
    return _keys_of(str(path), st.st_mtime_ns, st.st_size)


@lru_cache(maxsize=8)
def _keys_of(name: str, mtime_ns: int, size: int) -> frozenset[str]:
    path = Path(name)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), "pt") as f:
                keys = set(f.keys())
        except Exception:  # not safetensors: the loader that reads it reports it
            return frozenset()
        return frozenset(k.split(".", 1)[1] if k.startswith("module.") else k for k in keys)
    try:
        return frozenset(read_openclip_state(path))
    except DataError:
        return frozenset()


def is_openclip_clip(path: str | Path) -> bool:
    """Whether ``path`` is an open_clip state dict (or Hub folder) holding both towers."""
    from .openclip_text import has_text_tower

    w = openclip_weights(path)
    if w is None:
        return False
    keys = _keys(w)
    return any(k.startswith("visual.") for k in keys) and has_text_tower(dict.fromkeys(keys))


def is_pretrained_clip(path: str | Path) -> bool:
    """A Hugging Face CLIP directory or an open_clip state dict with both towers."""
    from .hf_clip import is_hf_clip

    return is_hf_clip(path) or is_openclip_clip(path)


def _openclip_config(weights: Path) -> dict[str, Any]:
    p = weights.with_name("open_clip_config.json")
    try:
        return json.loads(p.read_text()) if p.is_file() else {}
    except (OSError, ValueError):
        raise DataError(f"'{p}' is not JSON; remove it or fix it") from None


def openclip_tokenizer(path: str | Path) -> Optional[Path]:
    """The tokenizer file beside an open_clip model's weights (:func:`clpoison.models.clip_bpe.find_tokenizer`)."""
    from .clip_bpe import find_tokenizer

    w = openclip_weights(path)
    return None if w is None else find_tokenizer(w.parent)


def load_openclip(path: str | Path, tokenizer: Optional[str] = None, heads: Optional[int] = None,
                  activation: Optional[str] = None, max_logit_scale: float = 100.0) -> PretrainedCLIP:
    """Both towers of an open_clip state dict and the tokenizer from ``tokenizer`` (else beside the weights)."""
    from .clip_bpe import TOKENIZER_FILES, load_clip_bpe
    from .openclip_text import text_from_openclip
    from .openclip_visual import OPENAI_MEAN, OPENAI_STD, from_openclip

    weights = openclip_weights(path)
    if weights is None:
        raise ConfigError(f"'{path}' is not {FORMATS}")
    tok_path = Path(tokenizer) if tokenizer else openclip_tokenizer(weights)
    if tok_path is None:
        raise ConfigError(f"open_clip model '{path}' needs its tokenizer: put {TOKENIZER_FILES} beside it, or name "
                          "it (method.params.tokenizer=PATH)")
    tok = load_clip_bpe(tok_path)
    state = read_openclip_state(weights)
    oc = _openclip_config(weights)
    mcfg = oc.get("model_cfg") or {}
    act = activation or ("quick_gelu" if mcfg.get("quick_gelu") else "gelu")
    vcfg, tcfg = mcfg.get("vision_cfg") or {}, mcfg.get("text_cfg") or {}
    vheads = heads or (int(vcfg["width"]) // int(vcfg.get("head_width", 64)) if "width" in vcfg else None)
    try:
        visual, vspec = from_openclip(state, {"activation": act, **({"heads": vheads} if vheads else {})})
        text, tspec = text_from_openclip(state, heads or tcfg.get("heads"), act)
    except ValueError as e:
        raise DataError(f"open_clip model '{weights}': {e}") from None
    if vspec["feature_dim"] != tspec["embed_dim"]:
        raise DataError(f"open_clip model '{weights}': image embedding {vspec['feature_dim']} != text embedding "
                        f"{tspec['embed_dim']}")
    if tok.vocab_size > tspec["vocab_size"]:
        raise ConfigError(f"tokenizer '{tok_path}' has {tok.vocab_size} tokens, the model's text tower "
                          f"{tspec['vocab_size']}: give the model's own tokenizer files")
    pre = oc.get("preprocess_cfg") or {}
    preprocessing = {"size": vspec["image_size"], "mean": list(pre.get("mean", OPENAI_MEAN)),
                     "std": list(pre.get("std", OPENAI_STD))}
    scale = state.get("logit_scale", torch.tensor(math.log(1 / 0.07)))
    model = TowersCLIP(visual, text, scale.float().reshape(()), max_logit_scale).eval()
    tower = {k: vspec[k] for k in ("arch", "layers", "width", "heads", "patch", "activation", "image_size") if k in vspec}
    return PretrainedCLIP(model, tok, preprocessing, tspec["context_length"], tspec["embed_dim"], "open_clip", str(path),
                          {**tower, "activation": act, "embed_dim": tspec["embed_dim"]})


def pretrained_source(loaded: PretrainedCLIP) -> dict[str, Any]:
    """``encoder.json``'s description of a pretrained CLIP's image tower: ``{"arch": "pretrained-clip",
    "pretrained": {"format", "path" (absolute), "image_tower": {arch, width, layers, heads, ...}}}``."""
    return {"arch": PRETRAINED_ARCH, "pretrained": {"format": loaded.format, "path": str(Path(loaded.path).resolve()),
                                                    "image_tower": dict(loaded.tower)}}


def pretrained_visual(info: Mapping[str, Any], what: str) -> nn.Module:
    """The image tower that ``encoder.json``'s ``pretrained`` entry names, read again from its path (the weights
    are then the encoder file's); one DataError line when the model is not there any more."""
    path, fmt = str(info.get("path") or ""), info.get("format")
    if not path or not Path(path).exists():
        raise DataError(f"{what}: the encoder is the image tower of the pretrained CLIP '{path}' ({fmt}), which is "
                        "not there any more; put it back (encoder.json names it)")
    if fmt == "huggingface":
        from .hf_clip import hf_visual

        return hf_visual(path)
    if fmt != "open_clip" or openclip_weights(path) is None:
        raise DataError(f"{what}: encoder.json names a pretrained CLIP '{path}' of format '{fmt}' that is not {FORMATS}")
    from .openclip_visual import from_openclip

    tower = info.get("image_tower") or {}
    opts = {k: tower[k] for k in ("heads", "activation") if tower.get(k)}
    try:
        return from_openclip(read_openclip_state(openclip_weights(path)), opts)[0]
    except ValueError as e:
        raise DataError(f"{what}: the pretrained CLIP '{path}': {e}") from None


def load_pretrained_clip(path: str | Path, tokenizer: Optional[str] = None, heads: Optional[int] = None,
                         activation: Optional[str] = None, max_logit_scale: float = 100.0) -> PretrainedCLIP:
    """The pretrained CLIP at ``path`` (:data:`FORMATS`); one ConfigError / DataError line otherwise."""
    from .hf_clip import load_hf_pretrained, is_hf_clip

    if not str(path):
        raise ConfigError(f"no pretrained CLIP given; set model.init=PATH ({FORMATS})")
    if is_hf_clip(path) or is_openclip_clip(path):
        loaded = (load_hf_pretrained(path, max_logit_scale) if is_hf_clip(path) else
                  load_openclip(path, tokenizer, heads, activation, max_logit_scale))
        loaded.model.visual.pretrained_source = pretrained_source(loaded)  # what encoder.json records
        return loaded
    w = openclip_weights(path)
    if w is not None and any(k.startswith("visual.") for k in read_openclip_state(w)):  # (a pickle is refused here)
        raise ConfigError(f"'{path}' holds an open_clip image tower but no whole text tower (token_embedding, "
                          "positional_embedding, transformer, ln_final, text_projection); it can be evaluated as an "
                          "image encoder only")
    raise ConfigError(f"'{path}' is not {FORMATS}" + ("" if Path(path).exists() else " (it does not exist)"))
