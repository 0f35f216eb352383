"""The **text tower of an open_clip CLIP** (the top-level keys of an open_clip ``CLIP`` state dict), rebuilt with
open_clip's parameter names so the weights load as they are (strict):

``token_embedding.weight`` (vocabulary × width), ``positional_embedding`` (context length × width), pre-norm residual
blocks ``transformer.resblocks.{i}.{ln_1, attn.in_proj_*, attn.out_proj.*, ln_2, mlp.c_fc, mlp.c_proj}`` (optional
LayerScale ``ls_1/ls_2``; the blocks of :mod:`clpoison.models.openclip_visual`) under open_clip's causal attention
mask (``-inf`` above the diagonal, so a token sees itself and the tokens before it), ``ln_final`` on every token, the
feature read at the end-of-text token found as **the argmax of the token ids** (open_clip's ``text_global_pool``
``argmax``: ``<end_of_text>`` has the largest id of CLIP's vocabulary), then ``@ text_projection`` (width ×
embedding, or an ``nn.Linear`` ``text_projection.weight``).

Tokens come in clpoison's convention (:mod:`clpoison.models.clip_bpe`: token id + 1, 0 pads); they are shifted
back and padding becomes open_clip's 0, which the causal mask keeps from changing the end-of-text feature.

What the state dict does not record: ``heads`` (default width / 64, open_clip's ``head_width``) and the activation
(``gelu`` or ``quick_gelu``, shared with the image tower). Not adapted (one line each): towers with a class token
(``cls_emb``, CoCa), Hugging Face text towers (``text.transformer.*``, open_clip's ``CustomTextCLIP``) and
SigLIP's ``logit_bias``.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from .openclip_visual import _Block, _Blocks, _count

TEXT_KEYS = ("token_embedding.weight", "positional_embedding", "ln_final.weight")


def has_text_tower(state: Mapping[str, Any]) -> bool:
    """Whether an open_clip state dict holds a whole text tower (not only a stray key or two)."""
    return all(k in state for k in TEXT_KEYS) and ("text_projection" in state or "text_projection.weight" in state)


class OpenClipText(nn.Module):
    """open_clip's text tower (CLIP's causal Transformer with argmax pooling); ``forward(tokens)`` → projected
    features (not normalised)."""

    def __init__(self, vocab: int, context: int, width: int, layers: int, heads: int, mlp: int, output_dim: int,
                 act: str = "gelu", layer_scale: bool = False, linear_projection: bool = False) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(vocab, width)
        self.positional_embedding = nn.Parameter(torch.zeros(context, width))
        self.transformer = _Blocks([_Block(width, heads, mlp, act, layer_scale) for _ in range(layers)])
        self.ln_final = nn.LayerNorm(width)
        self.text_projection: Any = (nn.Linear(width, output_dim, bias=False) if linear_projection
                                     else nn.Parameter(torch.zeros(width, output_dim)))
        self.register_buffer("attn_mask", torch.full((context, context), float("-inf")).triu(1), persistent=False)
        self.context_length = context

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        n = tokens.shape[1]
        if n > self.context_length:
            raise ValueError(f"tokens have length {n} > context_length {self.context_length}")
        ids = (tokens - 1).clamp_min(0)  # clpoison's id + 1 → open_clip's id; padding → 0
        x = self.token_embedding(ids) + self.positional_embedding[:n]
        mask = self.attn_mask[:n, :n].to(x.dtype)
        for block in self.transformer.resblocks:
            x = block(x, mask)
        x = self.ln_final(x)
        pooled = x[torch.arange(len(x), device=x.device), ids.argmax(-1)]
        proj = self.text_projection
        return proj(pooled) if isinstance(proj, nn.Linear) else pooled @ proj.to(pooled.dtype)


def text_from_openclip(state: Mapping[str, torch.Tensor], heads: int | None = None, act: str = "gelu"
                       ) -> tuple[OpenClipText, dict[str, Any]]:
    """``(text tower, spec)`` from an open_clip model state dict (top-level keys; ``visual.*`` ignored). Raises
    ValueError naming what does not fit."""
    if any(k.startswith("text.") for k in state):
        raise ValueError("Hugging Face text towers (text.transformer.*, open_clip's CustomTextCLIP) are not adapted; "
                         "only CLIP's own text Transformer")
    if "cls_emb" in state or "logit_bias" in state:
        raise ValueError("class-token text towers (CoCa) and SigLIP (logit_bias) are not adapted")
    if not has_text_tower(state):
        raise ValueError(f"no text tower ({', '.join(TEXT_KEYS)}, text_projection)")
    txt = {k: v for k, v in state.items() if not k.startswith("visual.") and k not in ("logit_scale", "attn_mask")
           and isinstance(v, torch.Tensor)}
    vocab, width = (int(d) for d in txt["token_embedding.weight"].shape)
    context = int(txt["positional_embedding"].shape[0])
    layers = _count(txt, r"transformer\.resblocks\.(\d+)\..+")
    if not layers:
        raise ValueError("no transformer.resblocks.* (the text Transformer)")
    heads = int(heads or max(1, width // 64))
    if width % heads:
        raise ValueError(f"text heads={heads} does not divide the text width {width}")
    linear = "text_projection.weight" in txt
    out_dim = int(txt["text_projection.weight"].shape[0] if linear else txt["text_projection"].shape[1])
    net = OpenClipText(vocab, context, width, layers, heads, int(txt["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]),
                       out_dim, act, "transformer.resblocks.0.ls_1.gamma" in txt, linear)
    expected = net.state_dict()
    for what, keys in (("missing", [k for k in expected if k not in txt]),
                       ("unexpected", [k for k in txt if k not in expected]),
                       ("of another shape", [k for k in expected if k in txt and txt[k].shape != expected[k].shape])):
        if keys:
            raise ValueError(f"the text tower's weights do not fit: {len(keys)} key(s) {what}, first '{keys[0]}'")
    net.load_state_dict(txt, strict=True)
    return net.eval(), {"vocab_size": vocab, "context_length": context, "width": width, "layers": layers,
                        "heads": heads, "embed_dim": out_dim}
