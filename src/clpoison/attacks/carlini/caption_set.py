"""The caption set of a label: the captions an attacker pairs with poisoned images to "label" them.

Carlini & Terzis (ICLR 2022, arXiv 2106.09667, §3 of the paper; dossier §1.3) use either

* ``captions`` (the paper's "naive" option, default): every real training caption that names the label as a whole
  word — RoCLIP's ``re.search(r'\\b' + label + r'\\b', c)`` — here case-insensitive by default and extended with
  configurable synonyms (e.g. ``automobile`` → ``car``); or
* ``templates``: CLIP zero-shot prompt templates filled with the label (CleanCLIP's generator).

Example::

    >>> caption_set(["a cat on a mat", "concatenate", "the CAT sat"], "cat")
    ['a cat on a mat', 'the CAT sat']
    >>> caption_set([], "dog", source="templates", templates=["a photo of a {}."])
    ['a photo of a dog.']
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence

import torch

from ...data.captions.caption_labels import label_pattern
from ...errors import ConfigError, DataError

SOURCES = ("captions", "templates")

# A few of the OpenAI ImageNet zero-shot templates (CLIP, Radford et al. 2021), used when source=templates.
DEFAULT_TEMPLATES = (
    "a photo of a {}.",
    "a bad photo of a {}.",
    "a photo of the large {}.",
    "a photo of the small {}.",
    "a cropped photo of a {}.",
    "a bright photo of a {}.",
    "a blurry photo of a {}.",
    "a close-up photo of a {}.",
    "a good photo of a {}.",
    "a low resolution photo of a {}.",
)


def caption_set(
    captions: Iterable[str],
    label: str,
    synonyms: Sequence[str] = (),
    source: str = "captions",
    templates: Optional[Sequence[str]] = None,
    case_sensitive: bool = False,
) -> list[str]:
    """The caption set of ``label`` (unique captions, first-seen order). Empty → :class:`DataError`."""
    if source not in SOURCES:
        raise ConfigError(f"caption_source='{source}' is unknown; choose one of: {', '.join(SOURCES)}")
    if source == "templates":
        tpl = list(templates or DEFAULT_TEMPLATES)
        bad = [t for t in tpl if "{}" not in t]
        if bad:
            raise ConfigError(f"template {bad[0]!r} has no '{{}}' placeholder for the label; add one")
        return [t.format(label) for t in tpl]
    pat = label_pattern([label, *synonyms], case_sensitive)
    out = list(dict.fromkeys(c for c in captions if pat.search(c)))
    if not out:
        words = ", ".join(repr(w) for w in [label, *synonyms])
        raise DataError(f"the caption set of '{label}' is empty: no training caption contains {words} as a whole word; "
                        "add synonyms or use caption_source=templates")
    return out


def matching_rows(captions: Sequence[Sequence[str]], label: str, synonyms: Sequence[str] = (),
                  case_sensitive: bool = False) -> list[int]:
    """Indices of dataset rows with at least one caption naming the label (label-consistent base images)."""
    pat = label_pattern([label, *synonyms], case_sensitive)
    return [i for i, caps in enumerate(captions) if any(pat.search(c) for c in caps)]


def sample_captions(pool: Sequence[str], n: int, g: torch.Generator) -> list[str]:
    """n captions from ``pool``: without replacement when the pool is large enough (RoCLIP), else with."""
    if n <= len(pool):
        idx = torch.randperm(len(pool), generator=g)[:n].tolist()
    else:
        idx = torch.randint(0, len(pool), (n,), generator=g).tolist()
    return [pool[i] for i in idx]


def resolve_label(class_names: Sequence[str], label, where: str) -> int:
    """Index of a class given by name or index; a name not in the class list → :class:`ConfigError`."""
    if isinstance(label, bool):
        label = str(label)
    if isinstance(label, int) or (isinstance(label, str) and label.isdigit() and label not in class_names):
        i = int(label)
        if not 0 <= i < len(class_names):
            raise ConfigError(f"{where}={i} is out of range: the data has {len(class_names)} classes (0..{len(class_names) - 1})")
        return i
    if label not in class_names:
        shown = ", ".join(list(class_names)[:20]) + (" ..." if len(class_names) > 20 else "")
        raise ConfigError(f"{where}='{label}' is not in the class list ({shown}); pick one of them")
    return list(class_names).index(label)


def require_captions(splits, attack: str):
    """The attack needs image–caption data (CaptionSplits); anything else → :class:`ConfigError`."""
    from ...data.captions import CaptionSplits

    if not isinstance(splits, CaptionSplits):
        raise ConfigError(f"attack '{attack}' poisons image-caption data (CLIP); use a caption dataset with method: clip")
    return splits
