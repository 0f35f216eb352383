"""EDA caption augmentation (Wei & Zou, EMNLP 2019), as used by SafeCLIP for its two caption views.

Four operations, each changing ``max(1, int(alpha * n_words))`` words (``alpha`` = 0.1, SafeCLIP's value):

* **synonym replacement** — replace non-stop-words that have synonyms by a random synonym;
* **random insertion** — insert a synonym of a random word at a random position;
* **random swap** — swap two random words;
* **random deletion** — delete each word with probability ``alpha`` (at least one word is kept).

As in EDA's ``eda()``, the sentence is lower-cased and reduced to letters, digits, hyphens and spaces first; one
operation is chosen at random for each augmented sentence and one augmented sentence is kept. Synonyms come from
the offline table in :mod:`clpoison.data.captions.synonyms` (nothing is downloaded; EDA uses WordNet).

SafeCLIP computes the augmented captions **once, when the dataset is built** (``src/data.py``), not every epoch;
:func:`eda_views` does the same: it is deterministic in ``seed``.

Example::

    >>> from clpoison.data.captions.eda import eda, eda_views
    >>> import random
    >>> eda("a small photo of a dog on the grass", random.Random(0)) != ""
    True
    >>> v1, v2 = eda_views(["a photo of a cat", "a truck"], seed=0)
    >>> len(v1), len(v2)
    (2, 2)
"""

from __future__ import annotations

import hashlib
import random
import re
from typing import Optional, Sequence

from .synonyms import STOP_WORDS, SYNONYMS

OPS = ("sr", "ri", "rs", "rd")


def clean_words(sentence: str) -> list[str]:
    s = re.sub(r"[^a-z0-9\- ]+", " ", sentence.lower().replace("\t", " ").replace("\n", " "))
    return [w for w in s.split(" ") if w]


def _synonyms(word: str, table: dict[str, list[str]]) -> list[str]:
    return [s for s in table.get(word, []) if s != word]


def synonym_replacement(words: list[str], n: int, rng: random.Random, table: dict = SYNONYMS) -> list[str]:
    out = list(words)
    candidates = [w for w in dict.fromkeys(words) if w not in STOP_WORDS and _synonyms(w, table)]
    rng.shuffle(candidates)
    for w in candidates[:n]:
        syn = rng.choice(_synonyms(w, table))
        out = [syn if x == w else x for x in out]
    return " ".join(out).split(" ")  # multi-word synonyms become several words


def random_insertion(words: list[str], n: int, rng: random.Random, table: dict = SYNONYMS) -> list[str]:
    out = list(words)
    for _ in range(n):
        for _attempt in range(10):
            syn = _synonyms(rng.choice(out), table) if out else []
            if syn:
                out.insert(rng.randint(0, len(out)), rng.choice(syn))
                break
    return " ".join(out).split(" ") if out else out


def random_swap(words: list[str], n: int, rng: random.Random) -> list[str]:
    out = list(words)
    if len(out) < 2:
        return out
    for _ in range(n):
        i, j = rng.randrange(len(out)), rng.randrange(len(out))
        out[i], out[j] = out[j], out[i]
    return out


def random_deletion(words: list[str], p: float, rng: random.Random) -> list[str]:
    if len(words) <= 1:
        return list(words)
    out = [w for w in words if rng.random() > p]
    return out or [rng.choice(words)]


def eda(sentence: str, rng: random.Random, alpha: float = 0.1, ops: Sequence[str] = OPS,
        table: Optional[dict] = None) -> str:
    """One EDA-augmented version of ``sentence`` (one random operation). Empty input is returned unchanged."""
    table = SYNONYMS if table is None else table
    words = clean_words(sentence)
    if not words:
        return sentence
    n = max(1, int(alpha * len(words)))
    op = rng.choice(list(ops))
    if op == "sr":
        out = synonym_replacement(words, n, rng, table)
    elif op == "ri":
        out = random_insertion(words, n, rng, table)
    elif op == "rs":
        out = random_swap(words, n, rng)
    elif op == "rd":
        out = random_deletion(words, alpha, rng)
    else:
        raise ValueError(f"unknown EDA operation '{op}'; choose from {OPS}")
    return " ".join(w for w in out if w) or sentence


def eda_views(captions: Sequence[str], seed: int = 0, alpha: float = 0.1, views: int = 2) -> list[list[str]]:
    """``views`` lists of EDA captions (one per input caption), computed once and deterministic in ``seed``."""
    rng = random.Random(seed * 7919 + 17)
    return [[eda(c, rng, alpha) for c in captions] for _ in range(views)]


def caption_seed(seed: int, text: str) -> int:
    """A 64-bit seed from ``seed`` and the caption ``text`` (sha256: the same on every process and run)."""
    return int.from_bytes(hashlib.sha256(f"{int(seed)}\0{text}".encode("utf-8")).digest()[:8], "little")


def eda_caption(text: str, seed: int, alpha: float) -> str:
    """One EDA view of ``text``, deterministic in (``seed``, ``text``) — the per-caption view of streamed data,
    where captions have no index to compute :func:`eda_views` over once (two identical captions get one view).

    >>> caption_seed(0, "a dog") == caption_seed(0, "a dog") != caption_seed(1, "a dog")
    True
    """
    return eda(text, random.Random(caption_seed(seed, text)), alpha)
