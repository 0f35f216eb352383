"""CLIP's byte-level BPE tokenizer (OpenAI CLIP / open_clip ``SimpleTokenizer``) from files the user provides, for
the text tower of an open_clip model — nothing is downloaded, nothing but the ``tokenizers`` package is needed.

Accepted (:data:`TOKENIZER_FILES`; a file, or the folder holding it):

* open_clip's own vocabulary ``bpe_simple_vocab_16e6.txt.gz`` (or the unzipped ``.txt``): the merges, from which the
  vocabulary is built as open_clip does — the 256 byte symbols, the same with ``</w>``, one token per merge (the
  first 49,152 − 258 lines after the header), then ``<start_of_text>``, ``<end_of_text>``;
* a Hugging Face CLIP tokenizer: ``vocab.json`` + ``merges.txt`` (same ids as open_clip's), or ``tokenizer.json``.

The pipeline is CLIP's: NFC, whitespace runs to one space, lower case; CLIP's word pattern (``'s|'t|...|\\p{L}+|
\\p{N}|[^\\s\\p{L}\\p{N}]+``); byte-level symbols; BPE with ``</w>`` ending each word. (open_clip also runs ``ftfy``
and HTML unescaping first: captions with broken Unicode or HTML entities may tokenize differently.)

``encode(texts, context_length)`` follows clpoison's convention for foreign tokenizers: **token id + 1, 0 pads**
(0 is a real CLIP token), ``<start_of_text> … <end_of_text>``; over-long captions keep ``<end_of_text>`` last as
open_clip's tokenizer does.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..errors import ConfigError

TOKENIZER_FILES = ("open_clip's bpe_simple_vocab_16e6.txt.gz, or a Hugging Face CLIP tokenizer (vocab.json + "
                   "merges.txt, or tokenizer.json)")
OPENCLIP_VOCAB = ("bpe_simple_vocab_16e6.txt.gz", "bpe_simple_vocab_16e6.txt")
WORD_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
N_MERGES = 49152 - 256 - 2  # open_clip reads this many merge lines after the header


def bytes_to_unicode() -> list[str]:
    """GPT-2 / CLIP's printable stand-ins of the 256 bytes, in CLIP's vocabulary order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def openclip_vocab(merges: Sequence[tuple[str, str]], specials: Sequence[str] = ("<start_of_text>", "<end_of_text>")
                   ) -> dict[str, int]:
    """open_clip's ``SimpleTokenizer`` vocabulary of a merge list."""
    byte_chars = bytes_to_unicode()
    vocab = [*byte_chars, *[c + "</w>" for c in byte_chars], *["".join(m) for m in merges], *specials]
    return {t: i for i, t in enumerate(vocab)}


def _merges(text: str) -> list[tuple[str, str]]:
    lines = text.split("\n")
    lines = lines[1:] if lines and lines[0].startswith("#") else lines
    return [tuple(line.split()) for line in lines[:N_MERGES] if len(line.split()) == 2]  # type: ignore[misc]


def find_tokenizer(where: Path) -> Optional[Path]:
    """The tokenizer file in ``where`` (a folder), by preference: tokenizer.json, vocab.json (+ merges.txt), open_clip's."""
    for name in ("tokenizer.json", "vocab.json", *OPENCLIP_VOCAB):
        if (where / name).is_file():
            return where / name
    return None


def _pipeline(vocab: dict[str, int], merges: list[tuple[str, str]], sot: str, eot: str):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, continuing_subword_prefix="", end_of_word_suffix="</w>",
                               fuse_unk=False, unk_token=eot))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                           normalizers.Lowercase(), normalizers.Strip()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(WORD_PATTERN), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    return tok


class ClipBPETokenizer:
    """CLIP's BPE behind clpoison's ``encode(texts, context_length) -> (N, L)`` (ids + 1, 0 pads)."""

    def __init__(self, tok, sot_id: int, eot_id: int) -> None:
        self.tok, self.sot_id, self.eot_id = tok, int(sot_id), int(eot_id)
        self.vocab_size = int(tok.get_vocab_size())
        self.pad_id = self.eot_id
        self.last_truncated = 0

    def encode(self, texts: Sequence[str], context_length: int) -> torch.Tensor:
        if context_length < 3:
            raise ConfigError(f"context_length={context_length} must be >= 3 (<start_of_text>, one token, <end_of_text>)")
        out = torch.zeros(len(texts), context_length, dtype=torch.int64)
        self.last_truncated = 0
        for i, e in enumerate(self.tok.encode_batch(list(texts), add_special_tokens=False)):
            ids = [t for t in e.ids if t not in (self.sot_id, self.eot_id)]
            if len(ids) > context_length - 2:
                ids = ids[: context_length - 2]
                self.last_truncated += 1
            row = [self.sot_id, *ids, self.eot_id]
            out[i, : len(row)] = torch.tensor(row, dtype=torch.int64) + 1
        return out

    def __len__(self) -> int:
        return self.vocab_size


def load_clip_bpe(path: str | Path) -> ClipBPETokenizer:
    """The tokenizer of ``path`` (one of :data:`TOKENIZER_FILES`, or a folder holding one); one ConfigError line
    naming the files when there is none or it cannot be read."""
    path = Path(path)
    found = find_tokenizer(path) if path.is_dir() else path if path.is_file() else None
    if found is None:
        raise ConfigError(f"no CLIP tokenizer at '{path}'; give {TOKENIZER_FILES}")
    try:
        if found.name.endswith(".json") and found.name != "vocab.json":
            from tokenizers import Tokenizer

            tok = Tokenizer.from_file(str(found))
            specials = [t for t in ("<|startoftext|>", "<start_of_text>") if tok.token_to_id(t) is not None]
            ends = [t for t in ("<|endoftext|>", "<end_of_text>") if tok.token_to_id(t) is not None]
            if not specials or not ends:
                raise ValueError("no <|startoftext|> / <|endoftext|> tokens: not a CLIP tokenizer")
            return ClipBPETokenizer(tok, tok.token_to_id(specials[0]), tok.token_to_id(ends[0]))
        if found.name == "vocab.json":
            vocab = json.loads(found.read_text(encoding="utf-8"))
            merges_file = found.with_name("merges.txt")
            if not merges_file.is_file():
                raise ValueError(f"'{merges_file.name}' is missing beside vocab.json")
            merges = _merges(merges_file.read_text(encoding="utf-8"))
            sot, eot = "<|startoftext|>", "<|endoftext|>"
        else:  # open_clip's merges file
            raw = found.read_bytes()
            merges = _merges((gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode("utf-8"))
            sot, eot = "<start_of_text>", "<end_of_text>"
            vocab = openclip_vocab(merges, (sot, eot))
        if sot not in vocab or eot not in vocab:
            raise ValueError(f"the vocabulary lacks {sot} / {eot}")
        return ClipBPETokenizer(_pipeline(vocab, merges, sot, eot), vocab[sot], vocab[eot])
    except ConfigError:
        raise
    except Exception as e:  # tokenizers raises plain Exception subclasses
        why = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise ConfigError(f"CLIP tokenizer '{found}' cannot be read ({why}); give {TOKENIZER_FILES}") from None
