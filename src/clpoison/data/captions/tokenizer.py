"""Byte-level BPE caption tokenizer for CLIP, trained offline on the training captions (the ``tokenizers`` package).

CLIP (Radford et al., ICML 2021, "Learning Transferable Visual Models From Natural Language Supervision") uses a
lower-cased byte-pair-encoding vocabulary and wraps every caption as ``<sot> tokens <eot>``, padded with zeros to a
fixed context length; the text tower reads its output at the ``<eot>`` position. Here the vocabulary is learned
from the run's own training captions (nothing is downloaded), or loaded from a ``tokenizer.json`` written by
:meth:`CaptionTokenizer.save` (or any ``tokenizers`` JSON that has the four special tokens below).

Special tokens (fixed ids): ``<pad>`` = 0, ``<unk>`` = 1, ``<sot>`` = 2, ``<eot>`` = 3.

**Over-long captions** are truncated to the context length: the first ``context_length - 2`` tokens are kept and
``<eot>`` is always the last token, so the text tower still pools a real end-of-text position (this is what
open_clip's tokenizer does). :meth:`encode` reports how many captions were truncated in ``last_truncated``.

Example::

    >>> from clpoison.data.captions.tokenizer import CaptionTokenizer
    >>> tok = CaptionTokenizer.train(["a photo of a cat", "a dog on the grass"] * 10, vocab_size=300)
    >>> ids = tok.encode(["a photo of a dog"], context_length=16)
    >>> ids.shape, int(ids[0, 0]) == tok.sot_id
    (torch.Size([1, 16]), True)
    >>> tok.decode(ids[0])
    'a photo of a dog'
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Sequence, Union

import torch

from ...errors import ConfigError

SPECIALS = ("<pad>", "<unk>", "<sot>", "<eot>")


class CaptionTokenizer:
    """A ``tokenizers.Tokenizer`` plus CLIP's wrapping, padding and truncation rules."""

    def __init__(self, tokenizer) -> None:  # tokenizers.Tokenizer
        self.tok = tokenizer
        ids = [tokenizer.token_to_id(s) for s in SPECIALS]
        if ids != [0, 1, 2, 3]:
            raise ConfigError(
                f"tokenizer lacks the special tokens {SPECIALS} at ids 0-3 (got {ids}); "
                "train one with CaptionTokenizer.train or save it with CaptionTokenizer.save"
            )
        self.pad_id, self.unk_id, self.sot_id, self.eot_id = ids
        self.last_truncated = 0

    # -- construction -------------------------------------------------------------------------------------------
    @classmethod
    def train(cls, captions: Iterable[str], vocab_size: int = 4096, min_frequency: int = 2) -> "CaptionTokenizer":
        """Learn a byte-level BPE vocabulary (lower-cased, NFKC) from ``captions``; deterministic for a given input."""
        from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

        if vocab_size < len(SPECIALS) + 256:
            raise ConfigError(f"tokenizer vocab_size={vocab_size} must be >= 260 (256 bytes + 4 special tokens)")
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase(), normalizers.Strip()])
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=list(SPECIALS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(list(captions), trainer=trainer)
        return cls(tok)

    @classmethod
    def from_str(cls, text: str) -> "CaptionTokenizer":
        from tokenizers import Tokenizer

        try:
            return cls(Tokenizer.from_str(text))
        except Exception as e:  # tokenizers raises plain Exception subclasses
            raise ConfigError(f"tokenizer JSON cannot be parsed ({type(e).__name__}: {e}); re-save it") from None

    @classmethod
    def from_file(cls, path: Union[str, Path]) -> "CaptionTokenizer":
        p = Path(path).expanduser()
        if not p.exists():
            raise ConfigError(f"tokenizer file '{p}' does not exist; check method.params.tokenizer or leave it null to train one")
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"tokenizer file '{p}' is not UTF-8 JSON; point at a tokenizer.json") from None
        return cls.from_str(text)

    def to_str(self) -> str:
        return self.tok.to_str()

    def save(self, path: Union[str, Path]) -> None:
        Path(path).write_text(self.to_str(), encoding="utf-8")

    # -- use ----------------------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    def encode(self, texts: Sequence[str], context_length: int = 32) -> torch.Tensor:
        """int64 (len(texts), context_length): ``<sot> ... <eot>`` then zeros; over-long captions are truncated."""
        if context_length < 3:
            raise ConfigError(f"context_length={context_length} must be >= 3 (<sot>, one token, <eot>)")
        out = torch.zeros(len(texts), context_length, dtype=torch.int64)
        self.last_truncated = 0
        encs = self.tok.encode_batch(list(texts), add_special_tokens=False)
        keep = context_length - 2
        for i, e in enumerate(encs):
            ids = e.ids
            if len(ids) > keep:
                ids = ids[:keep]
                self.last_truncated += 1
            row = [self.sot_id, *ids, self.eot_id]
            out[i, : len(row)] = torch.tensor(row, dtype=torch.int64)
        return out

    def decode(self, ids: Union[torch.Tensor, Sequence[int]]) -> str:
        ids = [int(i) for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids)]
        ids = [i for i in ids if i not in (self.pad_id, self.sot_id, self.eot_id)]
        return self.tok.decode(ids).strip()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CaptionTokenizer) and json.loads(self.to_str()) == json.loads(other.to_str())
