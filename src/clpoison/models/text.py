"""Causal Transformer text tower with CLIP-style end-of-text pooling.

As in CLIP (Radford et al., ICML 2021, §2.4): token + learned positional embeddings, pre-LayerNorm Transformer blocks
with a causal (lower-triangular) attention mask, a final LayerNorm, and the feature read at the ``<eot>`` position
(CLIP takes ``argmax`` of the token ids because ``<eot>`` has the largest id; here ``<eot>`` has a fixed id, so its
first occurrence is used), followed by a linear projection. Because attention is causal and padding comes after
``<eot>``, trailing padding never changes the output, so batches may be trimmed to their longest caption.

Example::

    >>> import torch
    >>> from clpoison.models.text import TextTransformer
    >>> net = TextTransformer(vocab_size=300, context_length=16, width=32, layers=2, heads=4, output_dim=24, eot_id=3)
    >>> tokens = torch.tensor([[2, 50, 60, 3, 0, 0]])
    >>> net(tokens).shape
    torch.Size([1, 24])
    >>> bool(torch.allclose(net(tokens), net(tokens[:, :4]), atol=1e-5))
    True
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError


class TextTransformer(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        context_length: int = 32,
        width: int = 128,
        layers: int = 3,
        heads: int = 4,
        output_dim: int = 128,
        eot_id: int = 3,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        if width % heads:
            raise ConfigError(f"text width {width} must be divisible by text heads {heads}")
        self.context_length, self.eot_id, self.width = context_length, eot_id, width
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        layer = nn.TransformerEncoderLayer(
            width, heads, int(width * mlp_ratio), dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Linear(width, output_dim, bias=False)
        self.register_buffer("causal_mask", torch.triu(torch.full((context_length, context_length), float("-inf")), 1), persistent=False)
        self.reset_parameters(layers)

    def reset_parameters(self, layers: int) -> None:
        # CLIP's initialisation (open_clip TextTransformer.init_parameters)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        proj_std = (self.width**-0.5) * ((2 * layers) ** -0.5)
        for blk in self.transformer.layers:
            nn.init.normal_(blk.self_attn.in_proj_weight, std=self.width**-0.5)
            nn.init.normal_(blk.self_attn.out_proj.weight, std=proj_std)
            nn.init.normal_(blk.linear1.weight, std=(2 * self.width) ** -0.5)
            nn.init.normal_(blk.linear2.weight, std=proj_std)
        nn.init.normal_(self.text_projection.weight, std=self.width**-0.5)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        n = tokens.shape[1]
        if n > self.context_length:
            raise ValueError(f"tokens have length {n} > context_length {self.context_length}; tokenize with that context length")
        x = self.token_embedding(tokens) + self.positional_embedding[:n]
        x = self.transformer(x, mask=self.causal_mask[:n, :n], is_causal=True)
        x = self.ln_final(x)
        is_eot = tokens == self.eot_id
        # first <eot>; rows without one (should not happen) fall back to the last position
        pos = torch.where(is_eot.any(1), is_eot.int().argmax(1), torch.full_like(tokens[:, 0], n - 1))
        return self.text_projection(x[torch.arange(len(x), device=x.device), pos])


class BagOfWordsText(nn.Module):
    """Bag-of-tokens text tower: the mean of the token embeddings of a caption (padding excluded), then an MLP
    ``width → width → output_dim``. Word order is ignored. It is the text tower of the CPU calibration prototype
    (``shared/reference/calibration.md`` §1: ``EmbeddingBag(mode='mean')`` + MLP) and of the CLIP small preset,
    where it learns the caption → class-word association about twice as fast per second as the Transformer.

    Example::

        >>> import torch
        >>> net = BagOfWordsText(vocab_size=300, width=32, output_dim=24)
        >>> tokens = torch.tensor([[2, 50, 60, 3, 0, 0]])
        >>> net(tokens).shape
        torch.Size([1, 24])
        >>> bool(torch.allclose(net(tokens), net(tokens[:, :4]))), bool(torch.allclose(net(tokens), net(torch.tensor([[2, 60, 50, 3]]))))
        (True, True)
    """

    def __init__(self, vocab_size: int, width: int = 128, output_dim: int = 128, pad_id: int = 0) -> None:
        super().__init__()
        self.pad_id = pad_id
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.ReLU(inplace=True), nn.Linear(width, output_dim))
        nn.init.normal_(self.token_embedding.weight, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        keep = (tokens != self.pad_id).unsqueeze(-1).to(self.token_embedding.weight.dtype)
        x = (self.token_embedding(tokens) * keep).sum(1) / keep.sum(1).clamp_min(1.0)
        return self.mlp(x)
