"""Class labels read from captions: which class names a caption mentions as a whole word.

Web caption sets (CC3M-style, ``shared/data/webcaps``) have no labels, yet the CLIP poisoning metrics — zero-shot,
backdoor ASR, targeted success — need labelled images, and targeted poisoning is meant to hit images *from the
training distribution* (Carlini & Terzis poison and test on the same web data). A caption such as "a brown dog
running on the beach" names one class (``dog``); :func:`labels_from_captions` gives each row the one class its
captions name (class name or one of its synonyms, whole word, case-insensitive), ``-1`` when they name none and
``-2`` when they name several (ambiguous). :func:`label_pattern` is the whole-word rule, shared with the Carlini
attacks' caption sets (:mod:`clpoison.attacks.carlini.caption_set`).

Example::

    >>> labels_from_captions([["a dog on grass"], ["a red car and a dog"], ["concatenate"], ["two cats"]],
    ...                      ["automobile", "cat", "dog"], {"automobile": ["car"], "cat": ["cats"]}).tolist()
    [2, -2, -1, 1]
"""

from __future__ import annotations

import re
from typing import Mapping, Optional, Sequence

import torch

from ...errors import ConfigError

NONE, SEVERAL = -1, -2  # no class named; more than one class named


def label_pattern(words: Sequence[str], case_sensitive: bool = False) -> re.Pattern:
    """A regex matching any of ``words`` as a whole word (``\\b`` on both sides; multi-word labels allowed)."""
    alts = "|".join(re.escape(w.strip()) for w in words if w.strip())
    if not alts:
        raise ConfigError("the label to build a caption set for is empty; give a class name")
    return re.compile(r"\b(?:" + alts + r")\b", 0 if case_sensitive else re.IGNORECASE)


def labels_from_captions(captions: Sequence[Sequence[str]], class_names: Sequence[str],
                         synonyms: Optional[Mapping[str, Sequence[str]]] = None,
                         case_sensitive: bool = False) -> torch.Tensor:
    """int64 ``(N,)``: per row, the index of the one class its captions name (the class name or a synonym as a
    whole word), :data:`NONE` (-1) when none, :data:`SEVERAL` (-2) when more than one."""
    synonyms = dict(synonyms or {})
    unknown = [k for k in synonyms if k not in class_names]
    if unknown:
        raise ConfigError(f"synonyms name '{unknown[0]}', which is not one of the class names "
                          f"({', '.join(class_names)}); key the synonyms by class name")
    pats = [label_pattern([c, *synonyms.get(c, ())], case_sensitive) for c in class_names]
    out = torch.full((len(captions),), NONE, dtype=torch.int64)
    for i, caps in enumerate(captions):
        text = "\n".join(caps)
        hit = [k for k, p in enumerate(pats) if p.search(text)]
        if hit:
            out[i] = hit[0] if len(hit) == 1 else SEVERAL
    return out
