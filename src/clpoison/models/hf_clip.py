"""A Hugging Face CLIP directory (``config.json``, ``model.safetensors``, tokenizer files, ``preprocessor_config.json``)
behind clpoison's CLIP interface (:mod:`clpoison.models.pretrained`): the same ``encode_image`` / ``encode_text`` /
``forward`` as :class:`clpoison.models.clip_model.CLIPModel`, a tokenizer with clpoison's ``encode(texts, context_length)``
and the model's own preprocessing (image size, mean, std).

Loaded without executing code: the architecture from ``config.json`` (``transformers.CLIPConfig``), the weights from
``model.safetensors`` only (a ``pytorch_model.bin`` is a pickle and is refused), the tokenizer from its files, no
network. ``transformers`` is the optional extra ``hf`` (``pip install 'clpoison[hf]'``); it runs with torch and
Pillow alone (no torchvision).

Preprocessing: clpoison's batched eval transform resizes the square image to the model's crop size (bilinear with
anti-aliasing) and normalises with the model's mean/std; for square images this is the processor's
resize-shortest-side + centre crop up to the resampling kernel (exact when the images already have the model's size).

Tokens: clpoison pads token rows with 0 and trims on it, while 0 is a real CLIP token; the tokenizer therefore writes
``id + 1`` (0 = padding) and the text tower undoes it and passes the attention mask.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .clip_bpe import bytes_to_unicode
from .clip_towers import PretrainedCLIP, TowersCLIP

HF_EXTRA = "Hugging Face CLIP needs the optional extra `hf`: pip install 'clpoison[hf]' (transformers 5, Python >= 3.11)"
WEIGHTS = "model.safetensors"


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ConfigError(HF_EXTRA) from None
    return transformers


def is_hf_clip(path: str | Path) -> bool:
    """A directory whose ``config.json`` says ``model_type: clip``."""
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text()).get("model_type") == "clip"
    except (ValueError, OSError):
        return False


def _check_dir(path: Path) -> None:
    if not is_hf_clip(path):
        raise ConfigError(f"'{path}' is not a Hugging Face CLIP directory (config.json with model_type 'clip'); set "
                          "method.params.path / pass the directory written by save_pretrained")


def preprocessing(path: str | Path) -> dict[str, Any]:
    """``{"size", "mean", "std"}`` of the model: ``preprocessor_config.json``'s crop size and mean/std (else the
    vision config's image size and OpenAI CLIP's mean/std)."""
    path = Path(path)
    _check_dir(path)
    p = path / "preprocessor_config.json"
    pre = json.loads(p.read_text()) if p.is_file() else {}
    crop = pre.get("crop_size")
    size = (crop.get("height") or crop.get("shortest_edge")) if isinstance(crop, dict) else crop
    if not size:
        size = json.loads((path / "config.json").read_text()).get("vision_config", {}).get("image_size", 224)
    return {"size": int(size), "mean": list(pre.get("image_mean", (0.48145466, 0.4578275, 0.40821073))),
            "std": list(pre.get("image_std", (0.26862954, 0.26130258, 0.27577711)))}


def load_hf_clip(path: str | Path) -> nn.Module:
    """The ``transformers.CLIPModel`` of a directory: architecture from config.json, weights from safetensors."""
    path = Path(path)
    _check_dir(path)
    weights = path / WEIGHTS
    if not weights.is_file():
        pickled = [n for n in ("pytorch_model.bin", "model.bin", "pytorch_model.pt") if (path / n).exists()]
        raise ConfigError(f"'{path}' has no {WEIGHTS}" + (f"; {pickled[0]} is a pickle, which can run code when "
                          "loaded: convert it to safetensors where you trust it" if pickled else ""))
    tf = _transformers()
    from safetensors.torch import load_file

    model = tf.CLIPModel(tf.CLIPConfig.from_json_file(str(path / "config.json")))
    state = load_file(str(weights))
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatch
        raise ConfigError(f"'{weights}' does not fit its config.json ({str(e).splitlines()[1].strip()[:160]})") from None
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ConfigError(f"'{weights}' does not fit its config.json ({len(missing)} missing, {len(unexpected)} "
                          f"unexpected tensors, e.g. {(missing or unexpected)[0]})")
    return model.eval()


def hf_clip_model(hf: nn.Module, pad_id: int, max_logit_scale: float = 100.0) -> TowersCLIP:
    """clpoison's CLIP interface over the towers of a ``transformers.CLIPModel`` (the projections are transformers'
    own ``get_image_features`` / ``get_text_features``; parameters ``visual.body.*``, ``text.body.*``, ...)."""
    return TowersCLIP(_Vision(hf.vision_model, hf.visual_projection), _Text(hf.text_model, hf.text_projection, pad_id),
                      hf.logit_scale, max_logit_scale)


class _Vision(nn.Module):
    """The image tower and its projection (features not normalised): what the linear probe and encoder files see."""

    def __init__(self, body: nn.Module, proj: nn.Module) -> None:
        super().__init__()
        self.body, self.proj = body, proj
        self.feature_dim = int(proj.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.body(pixel_values=x).pooler_output)


def hf_visual(path: str | Path) -> nn.Module:
    """The image tower (with its projection) of a Hugging Face CLIP directory, as :func:`hf_clip_model` builds it."""
    hf = load_hf_clip(path)
    return _Vision(hf.vision_model, hf.visual_projection).eval()


def hf_tower(hf: nn.Module) -> dict[str, Any]:
    """What the image tower of a ``transformers.CLIPModel`` is (its vision config): recorded in ``encoder.json``."""
    v = hf.config.vision_config
    return {"arch": "hf-clip-vit", "width": int(v.hidden_size), "layers": int(v.num_hidden_layers),
            "heads": int(v.num_attention_heads), "patch": int(v.patch_size), "image_size": int(v.image_size),
            "activation": str(v.hidden_act), "embed_dim": int(hf.config.projection_dim)}


class _Text(nn.Module):
    """The text tower: clpoison's tokens (id + 1, 0 pads) back to the model's ids and attention mask."""

    def __init__(self, body: nn.Module, proj: nn.Module, pad_id: int) -> None:
        super().__init__()
        self.body, self.proj, self.pad_id = body, proj, int(pad_id)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        mask = tokens != 0
        ids = torch.where(mask, tokens - 1, torch.full_like(tokens, self.pad_id))
        return self.proj(self.body(input_ids=ids, attention_mask=mask.long()).pooler_output)


def load_hf_pretrained(path: str | Path, max_logit_scale: float = 100.0) -> PretrainedCLIP:
    """A Hugging Face CLIP directory behind clpoison's model interface (:mod:`clpoison.models.pretrained`)."""
    hf = load_hf_clip(path)  # checks the directory and the extra first
    tok = HFTokenizer(path)
    return PretrainedCLIP(hf_clip_model(hf, tok.pad_id, max_logit_scale), tok, preprocessing(path),
                          int(hf.config.text_config.max_position_embeddings), int(hf.config.projection_dim),
                          "huggingface", str(path), hf_tower(hf))


class HFTokenizer:
    """The directory's own tokenizer behind clpoison's ``encode(texts, context_length) -> (N, L)`` (ids + 1, 0 pads)."""

    def __init__(self, path: str | Path) -> None:
        tf = _transformers()
        try:
            self.tok = tf.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as e:
            raise ConfigError(f"'{path}' has no readable tokenizer (tokenizer.json, or vocab.json + merges.txt and "
                              f"tokenizer_config.json) ({str(e).splitlines()[0][:120]})") from None
        self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
        self.vocab_size = len(self.tok)
        self.last_truncated = 0

    def encode(self, texts: Sequence[str], context_length: int) -> torch.Tensor:
        full = self.tok(list(texts), add_special_tokens=True)["input_ids"]
        self.last_truncated = sum(len(t) > context_length for t in full)
        enc = self.tok(list(texts), padding="max_length", truncation=True, max_length=context_length,
                       return_tensors="pt")
        return torch.where(enc["attention_mask"].bool(), enc["input_ids"] + 1, torch.zeros_like(enc["input_ids"]))

    def __len__(self) -> int:
        return self.vocab_size


def write_tiny_hf_clip(out: str | Path, image_size: int = 32, patch: int = 8, width: int = 32, seed: int = 0,
                       words: Sequence[str] = ()) -> Path:
    """A small randomly initialised Hugging Face CLIP directory (``save_pretrained``, safetensors; a byte-level
    vocabulary plus ``words``), to try the loading path where no pretrained weights can be downloaded."""
    tf = _transformers()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    byte_chars = bytes_to_unicode()
    vocab = [*byte_chars, *[c + "</w>" for c in byte_chars], "<|startoftext|>", "<|endoftext|>"]
    merges = []
    for w in dict.fromkeys(words):  # merge left to right so that each word becomes one token
        for i in range(1, len(w)):
            merges.append((w[:i], w[i] + ("</w>" if i == len(w) - 1 else "")))
            vocab.append(w[: i + 1] + ("</w>" if i == len(w) - 1 else ""))
    vocab_ids = {t: i for i, t in enumerate(dict.fromkeys(vocab))}
    tok = tf.CLIPTokenizer(vocab=vocab_ids, merges=list(dict.fromkeys(merges)))
    tok.save_pretrained(str(out))
    n_vocab = len(tok)
    torch.manual_seed(seed)
    cfg = tf.CLIPConfig(
        text_config={"vocab_size": n_vocab, "hidden_size": width, "intermediate_size": 2 * width, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "max_position_embeddings": 77, "bos_token_id": tok.bos_token_id,
                     "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id},
        vision_config={"hidden_size": width, "intermediate_size": 2 * width, "num_hidden_layers": 2,
                       "num_attention_heads": 2, "image_size": image_size, "patch_size": patch},
        projection_dim=width)
    tf.CLIPModel(cfg).eval().save_pretrained(str(out), safe_serialization=True)
    (out / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": image_size},
        "do_center_crop": True, "crop_size": {"height": image_size, "width": image_size}, "do_rescale": True,
        "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "do_convert_rgb": True}))
    return out


@torch.no_grad()
def transformers_embeddings(path: str | Path, images: torch.Tensor, captions: Sequence[str]
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised (image, caption) embeddings as transformers itself computes them for uint8 images (N, 3, H, W):
    ``CLIPModel.from_pretrained``, its PIL image processor and tokenizer (the check of the loading path)."""
    tf = _transformers()
    from PIL import Image

    model = tf.CLIPModel.from_pretrained(str(path), local_files_only=True, use_safetensors=True).eval()
    proc_cls = getattr(tf, "CLIPImageProcessorPil", None) or tf.CLIPImageProcessor
    proc = proc_cls.from_pretrained(str(path), local_files_only=True)
    tok = tf.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    pix = proc(images=[Image.fromarray(im.permute(1, 2, 0).cpu().numpy()) for im in images], return_tensors="pt")
    enc = tok(list(captions), padding=True, truncation=True, return_tensors="pt")
    img = model.get_image_features(pixel_values=pix["pixel_values"])
    txt = model.get_text_features(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    img, txt = getattr(img, "pooler_output", img), getattr(txt, "pooler_output", txt)
    return F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
