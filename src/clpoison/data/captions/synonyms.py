"""An offline synonym table for EDA-style caption augmentation (:mod:`clpoison.data.captions.eda`).

EDA (Wei & Zou, EMNLP 2019) draws synonyms from WordNet; SafeCLIP's ``utils/eda.py`` does the same through NLTK,
which needs a corpus download. Nothing is downloaded here: this table is a small hand-written, WordNet-style list
of common caption words (objects, animals, vehicles, scenes, colours, adjectives, verbs). Synonymy is symmetric
within a group: every word of a group maps to the other words of its group. Words not in the table are simply
not replaced (EDA does the same for words without WordNet synsets).
"""

from __future__ import annotations

GROUPS: tuple[tuple[str, ...], ...] = (
    # vehicles
    ("airplane", "aeroplane", "plane", "aircraft"), ("jet", "jetliner", "airliner"),
    ("automobile", "car", "auto", "motorcar"), ("sedan", "saloon"), ("truck", "lorry"), ("pickup", "pickup truck"),
    ("ship", "vessel"), ("boat", "craft"), ("freighter", "cargo ship"), ("bus", "coach"), ("bike", "bicycle", "cycle"),
    ("train", "railway train"), ("vehicle", "conveyance"), ("watercraft", "vessel"),
    # animals
    ("cat", "true cat"), ("kitty", "kitty cat", "puss"), ("kitten", "kitty"), ("feline", "felid"),
    ("dog", "domestic dog", "canine"), ("puppy", "pup", "whelp"), ("pet", "companion animal"),
    ("bird", "fowl"), ("songbird", "songster"), ("deer", "cervid"), ("stag", "hart"), ("doe", "hind"),
    ("fawn", "young deer"), ("frog", "toad", "anuran"), ("horse", "equine", "steed"), ("pony", "nag"),
    ("stallion", "entire"), ("mare", "female horse"), ("animal", "creature", "beast", "fauna"),
    ("wildlife", "wild animals"), ("livestock", "stock", "farm animal"), ("amphibian", "amphibious creature"),
    # scenes and places
    ("grass", "lawn", "turf"), ("water", "lake", "sea"), ("road", "route", "street"), ("field", "meadow"),
    ("forest", "wood", "woods"), ("sky", "heavens"), ("beach", "shore", "seashore"), ("city", "town", "metropolis"),
    ("park", "parkland"), ("garden", "yard"), ("house", "home", "dwelling"), ("river", "stream"),
    ("mountain", "mount", "peak"), ("snow", "snowfall"), ("distance", "remoteness"), ("trip", "journey", "tour"),
    ("day", "daytime"), ("morning", "forenoon", "dawn"), ("summer", "summertime"), ("night", "nighttime"),
    # photos and web words
    ("photo", "photograph", "picture", "pic", "image", "shot", "snapshot"), ("close-up", "closeup"),
    ("sale", "selling"), ("condition", "shape", "state"), ("shipping", "delivery"), ("order", "purchase"),
    ("friend", "pal", "buddy"), ("stock", "inventory"),
    # colours
    ("red", "crimson", "scarlet"), ("blue", "azure", "cerulean"), ("green", "verdant"), ("white", "snowy"),
    ("black", "dark", "sable"), ("grey", "gray", "greyish"), ("brown", "chocolate", "tan"), ("yellow", "golden"),
    # adjectives
    ("small", "little", "tiny", "minor"), ("big", "large", "huge", "great"), ("old", "aged", "ancient", "vintage"),
    ("new", "fresh", "novel"), ("beautiful", "lovely", "gorgeous", "pretty"), ("blurry", "blurred", "fuzzy"),
    ("happy", "glad", "joyful"), ("good", "fine", "nice"), ("best", "finest", "top"), ("free", "gratis", "complimentary"),
    ("fast", "quick", "rapid", "speedy"), ("cute", "adorable", "sweet"), ("wild", "untamed"), ("young", "youthful"),
    ("bright", "vivid", "brilliant"), ("quiet", "calm", "tranquil"), ("isolated", "detached", "separate"),
    ("funny", "amusing", "comic"), ("sunny", "bright", "cheery"), ("rainy", "showery", "wet"), ("wooden", "wood"),
    # verbs and adverbs
    ("look", "see", "view"), ("spotted", "seen", "sighted"), ("check", "examine", "inspect"),
    ("enlarge", "magnify", "expand"), ("running", "racing", "sprinting"), ("sitting", "seated", "resting"),
    ("standing", "upright"), ("flying", "soaring"), ("parked", "stopped"), ("eating", "feeding"),
    ("today", "now", "nowadays"), ("near", "close", "nigh"), ("next", "adjacent"), ("contain", "hold", "include"),
)

STOP_WORDS: frozenset[str] = frozenset(
    "i me my myself we our ours ourselves you your yours yourself yourselves he him his himself she her hers herself "
    "it its itself they them their theirs themselves what which who whom this that these those am is are was were be "
    "been being have has had having do does did doing a an the and but if or because as until while of at by for "
    "with about against between into through during before after above below to from up down in out on off over "
    "under again further then once here there when where why how all any both each few more most other some such no "
    "nor not only own same so than too very s t can will just don should now".split()
)


def build_table(groups: tuple[tuple[str, ...], ...] = GROUPS) -> dict[str, list[str]]:
    table: dict[str, list[str]] = {}
    for g in groups:
        for w in g:
            syn = table.setdefault(w, [])
            syn.extend(s for s in g if s != w and s not in syn)
    return table


SYNONYMS: dict[str, list[str]] = build_table()
