"""What the CLIP benchmark scripts under ``benchmarks/`` share (imported as ``_clip``; not library code): the caption set they train on (``--captions``: the bundled stand-in
captions, a caption CSV/TSV, or webdataset tar shards such as ``shared/data/webcaps``) turned into config sections,
the backdoor's dose as a rate or a count (run names that several scripts share), rates with their pooled 95 %
intervals over seeds, and the CleanCLIP settings a benchmark searches (fine-tuning epochs × clean pairs).

Example::

    >>> import argparse
    >>> ap = argparse.ArgumentParser(); add_caption_args(ap)
    >>> args = ap.parse_args(["--captions", "../shared/data/webcaps/train-{000000..000003}.tar"])
    >>> caption_sections(args)["data"]["name"], caption_set_name(args)
    ('captions-tar', 'webcaps')
    >>> caption_sections(ap.parse_args([])), caption_set_name(ap.parse_args([]))
    ({}, 'cifar10-subset')
    >>> backdoor_dose(count=50), backdoor_dose(rate=0.01)
    ((['attack.params.poison_rate=null', 'attack.params.poison_count=50'], '_n50'), (['attack.params.poison_rate=0.01'], '_0.01'))
    >>> pooled_rate([{"asr": 0.5, "asr_hits": 5, "asr_n": 10}, {"asr": 0.7, "asr_hits": 7, "asr_n": 10}], "asr")["mean"]
    0.6
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path
from typing import Any, Optional

from clpoison.errors import ConfigError
from clpoison.eval.attack_metrics import wilson_interval
from clpoison.experiments.config import load_preset

from _harness import stats

ATTACK_SETS = ("labelled", "test-captions")
#: the CIFAR-10 classes and the words web captions use for them (plurals, the common names), for an attack set
#: labelled by its captions (``--attack-set test-captions``, :mod:`clpoison.data.captions.caption_labels`)
CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
WEB_SYNONYMS = {"airplane": ["airplanes", "plane", "planes", "aircraft", "airliner", "jet"],
                "automobile": ["automobiles", "car", "cars"], "bird": ["birds"], "cat": ["cats", "kitten", "kittens"],
                "dog": ["dogs", "puppy", "puppies"], "frog": ["frogs"], "horse": ["horses"],
                "ship": ["ships", "boat", "boats"], "truck": ["trucks"]}
BUNDLED = "cifar10-subset"  # the zero-setup default: the bundled CIFAR-10 subset with generated stand-in captions
_FILE_KINDS = {".csv": "captions-csv", ".tsv": "captions-csv", ".tar": "captions-tar"}


def add_caption_args(ap: argparse.ArgumentParser) -> None:
    """``--captions``, ``--test-captions``, ``--label-column``, ``--eval-set``, ``--eval-split``, ``--attack-set``,
    ``--caption-set``."""
    ap.add_argument("--captions", default=BUNDLED, help="training pairs: a caption CSV/TSV, tar shards (a brace list "
                    "such as ../shared/data/webcaps/train-{000000..000003}.tar) or a caption source name "
                    f"(default {BUNDLED}: the bundled subset with generated stand-in captions)")
    ap.add_argument("--test-captions", help="caption test file/shards for retrieval (default: a 10%% hold-out)")
    ap.add_argument("--label-column", help="label column of a caption CSV, if any (never used for training)")
    ap.add_argument("--eval-set", default=BUNDLED, help="labelled image set for zero-shot, ASR and targeted success "
                    "when --captions is a file (source name or path; default: the bundled test split)")
    ap.add_argument("--eval-split", default="test")
    ap.add_argument("--attack-set", choices=ATTACK_SETS, default="labelled", help="where ASR is measured and "
                    "targeted victims are drawn: 'labelled' (--eval-set, default) or 'test-captions' (the images of "
                    "--test-captions whose caption names one CIFAR-10 class, labelled by it: victims from the training "
                    "distribution; zero-shot is still also measured on --eval-set)")
    ap.add_argument("--caption-set", default=None, help="the name written as \"caption_set\" in the JSON (default: "
                    "the shards' folder name, e.g. webcaps, or the source name)")


def attack_list(text: str) -> tuple[str, ...]:
    """The ``--attacks`` comma list of the CLIP comparisons (``backdoor``, ``targeted``, in the order given); an
    unknown name is one ConfigError line, before anything trains."""
    attacks = tuple(a.strip() for a in text.split(",") if a.strip())
    unknown = [a for a in attacks if a not in ("backdoor", "targeted")]
    if unknown or not attacks:
        raise ConfigError(f"--attacks: unknown attack {(unknown or [text])[0]!r}; use backdoor, targeted or both "
                          "(comma list)")
    return attacks


def caption_file(captions: str) -> Optional[str]:
    """The reader (``captions-csv`` / ``captions-tar``) of a caption path, ``None`` for a source name."""
    return _FILE_KINDS.get(Path(captions).suffix.lower())


def caption_sections(args: Any, always: bool = False) -> dict:
    """Config sections of the caption set: ``data`` (the reader, path, test file) and ``eval.sets`` (the labelled
    set on which zero-shot, ASR and targeted success are measured). The bundled default gives ``{}`` — the presets'
    own data, so the runs keep the names and configs of the bundled benchmarks — unless ``always``."""
    kind = caption_file(args.captions)
    if kind is None and args.captions == BUNDLED and not always:
        if args.test_captions or args.label_column or args.attack_set != "labelled":
            raise ConfigError("--test-captions / --label-column / --attack-set test-captions need --captions FILE (a "
                              "CSV/TSV or tar shards)")
        return {}
    if kind is None:
        if args.test_captions or args.label_column:
            raise ConfigError(f"--captions {args.captions} is a source name; --test-captions / --label-column need a "
                              "caption file (CSV/TSV or tar shards)")
        data: dict = {"name": args.captions}
    else:
        data = {"name": kind, "path": str(args.captions)}
        caps = {k: v for k, v in (("test_path", args.test_captions), ("label_column", args.label_column)) if v}
        if caps:
            data["captions"] = caps
    sets: dict = {"labelled": {"data": args.eval_set, "split": args.eval_split}}
    if args.attack_set == "labelled":
        return {"data": data, "eval": {"sets": sets}}
    if not args.test_captions:
        raise ConfigError("--attack-set test-captions labels the images of --test-captions by their captions; give "
                          "--test-captions FILE")
    sets["web"] = {"data": str(args.test_captions), "class_names": CIFAR10, "synonyms": WEB_SYNONYMS}
    return {"data": data, "eval": {"sets": sets, "attack_set": "web"}}


def caption_set_name(args: Any) -> str:
    """``--caption-set``, else the folder of a caption file (``webcaps``), else the source name."""
    if getattr(args, "caption_set", None):
        return str(args.caption_set)
    if caption_file(args.captions) is not None:
        return Path(args.captions).parent.name or Path(args.captions).stem
    return str(args.captions)


def caption_details(args: Any, sections: dict) -> dict:
    """What the output JSON records about the caption set besides its name: the paths and the labelled set."""
    ev = sections.get("eval") or {}
    out = {"captions": str(args.captions), "test_captions": args.test_captions,
           "eval_set": (ev.get("sets") or {}).get("labelled")}
    if ev.get("attack_set"):  # --attack-set test-captions: the web set, labelled by its captions
        out.update(attack_set=ev["attack_set"], attack_set_spec=ev["sets"][ev["attack_set"]])
    return out


def backdoor_dose(rate: Optional[float] = None, count: Optional[int] = None) -> tuple[list[str], str]:
    """``(overrides, run-name tag)`` of the Carlini backdoor at a poison count (``_n50``) or a rate (``_0.01``)."""
    if (rate is None) == (count is None):
        raise ConfigError("give the backdoor dose as exactly one of a rate or a count")
    if count is not None:
        return ["attack.params.poison_rate=null", f"attack.params.poison_count={int(count)}"], f"_n{int(count)}"
    return [f"attack.params.poison_rate={rate}"], f"_{rate}"


RATE_KEYS = {"asr": ("asr_hits", "asr_n"), "targeted_success_rate": ("targeted_successes", "targeted_n")}


def pooled_rate(metrics: list[dict], key: str) -> dict:
    """Mean, std and per-seed values of a rate over runs (:func:`_harness.stats`) with the 95 %
    Wilson interval of the hits pooled over seeds (as the report: :mod:`clpoison.report.aggregate`), and the hits."""
    out: dict[str, Any] = stats([m.get(key) for m in metrics])
    hk, nk = RATE_KEYS[key]
    k = [m.get(hk) for m in metrics]
    n = [m.get(nk) for m in metrics]
    if metrics and all(isinstance(x, int) for x in k + n):
        out.update(ci95=list(wilson_interval(sum(k), sum(n))), hits=sum(k), trials=sum(n))
    else:
        out.update(ci95=None, hits=None, trials=None)
    return out


# CleanCLIP: the fine-tuning length and clean-set size searched by clip_defenses_small.py

def cleanclip_variants(epochs: Optional[list], pairs: Optional[list]) -> dict[str, tuple]:
    """``{run-name tag: (epochs, pairs)}`` of the CleanCLIP fine-tuning settings to train: the preset's alone (tag
    ``""``, ``()``) unless fine-tuning epochs or clean-set sizes are asked for (every combination, the preset's value
    for the one not given)."""
    if not epochs and not pairs:
        return {"": ()}
    pre = load_preset("cleanclip-small")
    epochs = epochs or [pre["train"]["epochs"]]
    pairs = pairs or [pre["defense"]["params"]["finetune_pairs"]]
    return {f"_e{e}_p{p}": (e, p) for e, p in itertools.product(epochs, pairs)}


def cleanclip_overrides(setting: tuple) -> list[str]:
    """The config overrides of a :func:`cleanclip_variants` setting."""
    return [f"train.epochs={setting[0]}", f"defense.params.finetune_pairs={setting[1]}"] if setting else []


def choose_cleanclip(search: dict, clean_asr: float, clip_zs: float) -> tuple[str, str]:
    """The CleanCLIP setting reported as *the* CleanCLIP row, and why: the cheapest (fewest epochs × pairs) whose
    mean ASR is within 0.10 of the clean model's and whose zero-shot is within 0.05 of plain CLIP's, else the one
    with the lowest ASR. ``search``: ``{tag: {"asr", "zeroshot", "epochs", "pairs", ...}}``."""
    def cost(tag: str) -> int:
        return search[tag]["epochs"] * search[tag]["pairs"]

    ok = [t for t, r in search.items() if r["asr"] <= clean_asr + 0.10 and r["zeroshot"] >= clip_zs - 0.05]
    if ok:
        t = min(ok, key=cost)
        return t, "the cheapest setting with ASR within 0.10 of the clean model's and zero-shot within 0.05 of CLIP's"
    t = min(search, key=lambda k: search[k]["asr"])
    return t, "no setting met ASR within 0.10 of the clean model's and zero-shot within 0.05 of CLIP's: the lowest ASR"
