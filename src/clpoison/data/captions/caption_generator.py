"""Synthetic web-style captions for a labelled image dataset (a stand-in for real alt-text).

**This is not real caption data.** The bundled CIFAR-10 subset has labels, not captions; to exercise CLIP
pretraining (and the Carlini & Terzis attacks, which search captions for a label word) without downloading a
scraped corpus, :class:`CaptionGenerator` writes captions that imitate some properties of web alt-text:

* varied templates ("a blurry photo of a {c} on the grass", "{c} for sale, good condition", ...);
* the class named by its name, a synonym ("car", "auto") or a hypernym ("vehicle", "animal") — hypernyms are
  shared between classes, so such a caption is only weakly informative, as on the web;
* 0–``max_fillers`` context words (colours, places, adjectives) around the template;
* a share ``noise_fraction`` of captions that name no class at all ("check out this pic from my trip").

It is deterministic under a seed: image ``i`` of split ``s`` gets the same captions whatever else is generated.
The prototype in ``shared/reference/calibration.md`` §1 (10 templates, 0–3 fillers, 20% noise) reached 52–54%
zero-shot with a bag-of-words text tower; these captions are harder (synonyms, hypernyms).

Example::

    >>> from clpoison.data.captions.caption_generator import CaptionGenerator
    >>> gen = CaptionGenerator(seed=0)
    >>> caps = gen.captions_for(["cat", "truck"], [0, 1], split="train")
    >>> len(caps), isinstance(caps[0][0], str)
    (2, True)
    >>> caps == CaptionGenerator(seed=0).captions_for(["cat", "truck"], [0, 1], split="train")
    True
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass
from typing import Optional, Sequence

from ...errors import ConfigError
from .caption_dataset import CaptionDataset, CaptionSplits

# name → (synonyms, hypernyms); lower-case words as they appear in captions
LEXICON: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "airplane": (("plane", "aeroplane", "jet", "airliner"), ("aircraft", "vehicle")),
    "automobile": (("car", "auto", "sedan"), ("vehicle",)),
    "bird": (("birdie", "songbird"), ("animal", "wildlife")),
    "cat": (("kitty", "kitten", "feline"), ("pet", "animal")),
    "deer": (("stag", "fawn", "doe"), ("animal", "wildlife")),
    "dog": (("puppy", "pup", "doggo"), ("pet", "animal")),
    "frog": (("toad", "bullfrog"), ("amphibian", "animal")),
    "horse": (("pony", "stallion", "mare"), ("animal", "livestock")),
    "ship": (("boat", "vessel", "freighter"), ("vehicle", "watercraft")),
    "truck": (("lorry", "pickup", "big rig"), ("vehicle",)),
}

TEMPLATES: tuple[str, ...] = (
    "a photo of a {c}",
    "a blurry photo of a {c} on the grass",
    "the {c} next to the water",
    "my {c} this morning",
    "close-up of a {c}",
    "{c} for sale, good condition",
    "an old picture of the {c}",
    "look at this {c}!!",
    "a small {c} in the distance",
    "{c} spotted near the road today",
    "stock image: {c} isolated",
    "what a beautiful {c}",
)

NOISE: tuple[str, ...] = (
    "check out this pic from my trip",
    "best day ever",
    "image may contain: outdoor",
    "throwback to last summer",
    "untitled",
    "free shipping on all orders",
    "click to enlarge",
    "nature at its finest",
    "photo by a friend",
    "so happy right now",
)

FILLERS: tuple[str, ...] = (
    "red", "blue", "green", "white", "black", "small", "big", "old", "new", "cute", "happy", "wet", "sunny",
    "cloudy", "outdoor", "indoor", "vintage", "hd", "wallpaper", "2019", "jpg", "free", "amazing", "nice",
    "farm", "city", "beach", "park", "home", "street",
)


@dataclass
class CaptionGeneratorConfig:
    """Options of :class:`CaptionGenerator` (config key ``data.captions.generator``)."""

    noise_fraction: float = 0.2  # share of captions that name no class
    synonym_p: float = 0.25  # of class-naming captions: share using a synonym
    hypernym_p: float = 0.1  # ... and a hypernym (the rest use the class name)
    max_fillers: int = 3  # 0..max_fillers context words added before/after
    captions_per_image: int = 1  # >1: several captions per image, one sampled per epoch
    templates: Optional[list[str]] = None  # override TEMPLATES; each must contain "{c}"

    def __post_init__(self) -> None:
        for n in ("noise_fraction", "synonym_p", "hypernym_p"):
            v = getattr(self, n)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"data.captions.generator.{n}={v} must lie in [0, 1]")
        if self.synonym_p + self.hypernym_p > 1.0:
            raise ConfigError("data.captions.generator.synonym_p + hypernym_p must be <= 1")
        if self.max_fillers < 0 or self.captions_per_image < 1:
            raise ConfigError("data.captions.generator.max_fillers must be >= 0 and captions_per_image >= 1")
        if self.templates is not None:
            bad = [t for t in self.templates if "{c}" not in t]
            if not self.templates or bad:
                raise ConfigError(f"data.captions.generator.templates: every template needs '{{c}}' (bad: {bad[:3]})")
            for t in self.templates:
                try:
                    t.format(c="x")
                except (KeyError, IndexError, ValueError):
                    raise ConfigError(f"data.captions.generator.templates: '{t}' has a field other than {{c}}; "
                                      "write literal braces as {{ }}") from None


class CaptionGenerator:
    def __init__(self, cfg: CaptionGeneratorConfig = CaptionGeneratorConfig(), seed: int = 0, **overrides) -> None:
        if overrides:
            cfg = CaptionGeneratorConfig(**{**cfg.__dict__, **overrides})
        self.cfg, self.seed = cfg, seed
        self.templates = tuple(cfg.templates or TEMPLATES)

    def _rng(self, split: str, i: int) -> random.Random:
        return random.Random(zlib.crc32(f"{self.seed}/{split}/{i}".encode()))

    def word_for(self, class_name: str, rng: random.Random) -> str:
        syn, hyp = LEXICON.get(class_name, ((), ()))
        u = rng.random()
        if syn and u < self.cfg.synonym_p:
            return rng.choice(syn)
        if hyp and u < self.cfg.synonym_p + self.cfg.hypernym_p:
            return rng.choice(hyp)
        return class_name.replace("_", " ")

    def caption(self, class_name: str, rng: random.Random) -> str:
        if rng.random() < self.cfg.noise_fraction:
            text = rng.choice(NOISE)
        else:
            text = rng.choice(self.templates).format(c=self.word_for(class_name, rng))
        n = rng.randint(0, self.cfg.max_fillers)
        words = [rng.choice(FILLERS) for _ in range(n)]
        k = rng.randint(0, n)
        return " ".join(words[:k] + [text] + words[k:])

    def captions_for(self, class_names: Sequence[str], labels: Sequence[int], split: str = "train") -> list[list[str]]:
        out = []
        for i, y in enumerate(labels):
            rng = self._rng(split, i)
            out.append([self.caption(class_names[int(y)], rng) for _ in range(self.cfg.captions_per_image)])
        return out


def caption_image_splits(splits, cfg: CaptionGeneratorConfig = CaptionGeneratorConfig(), seed: int = 0) -> CaptionSplits:
    """Turn labelled :class:`~clpoison.data.datasets.ImageSplits` into :class:`CaptionSplits` with generated captions
    (labels kept for zero-shot evaluation and attack bookkeeping; pretraining never reads them)."""
    gen = CaptionGenerator(cfg, seed)
    names = list(splits.class_names)

    def one(ds, split: str) -> CaptionDataset:
        caps = gen.captions_for(names, ds.labels.tolist(), split)
        return CaptionDataset(ds.images, caps, names, ds.labels.clone(), f"{ds.name}+captions", ds.sizes)

    source = {**splits.source,
              "captions": "generated (clpoison.data.captions.caption_generator; a stand-in for real captions)",
              "generator": {k: v for k, v in cfg.__dict__.items()}, "caption_seed": seed}
    return CaptionSplits(one(splits.train, "train"), one(splits.test, "test"), source)


__all__ = ["CaptionGenerator", "CaptionGeneratorConfig", "caption_image_splits", "LEXICON", "TEMPLATES", "NOISE"]
