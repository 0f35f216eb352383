"""The command line's parser: one style for every sub-command of :mod:`clpoison.cli`.

Every sub-command has a description, an example and the names it accepts (methods, attacks, defenses, data
sources) in ``--help``; takes ``key=value`` items anywhere on the line (config overrides; for ``poison`` attack
parameters, and for ``poison`` / ``scan`` the data options ``data.name``, ``data.path``, ``data.image_size``,
``data.captions.*`` and ``seed``, of which ``--data`` / ``--data-path`` / ``--image-size`` / ``--label-column`` /
``--test-path`` / ``--seed`` are aliases); accepts ``--threads`` before or after its name; and usage errors are
one ``error:`` line with exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .errors import ConfigError


class OneLineParser(argparse.ArgumentParser):
    """argparse parser whose usage errors are one ``error: ...`` line (exit 2), like every other input error."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"error: {self.prog}: {message}; see `{self.prog} --help`\n")


class KeyValueParser(OneLineParser):
    """Sub-command parser that accepts ``key=value`` items anywhere on the line (argparse alone fills a ``*``
    positional only once, so ``pretrain clip --preset small train.epochs=5`` would fail). They are collected into
    ``kv_dest`` (``overrides`` for config overrides, ``params`` for attack parameters)."""

    kv_dest = "overrides"

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        args = list(sys.argv[1:] if args is None else args)
        value_opts = {o for a in self._actions if a.option_strings and a.nargs != 0 for o in a.option_strings}
        kv = [i for i, a in enumerate(args)
              if "=" in a and not a.startswith("-") and (i == 0 or args[i - 1] not in value_opts)]
        ns, extra = super().parse_known_args([a for i, a in enumerate(args) if i not in kv], namespace)
        setattr(ns, self.kv_dest, list(getattr(ns, self.kv_dest, None) or []) + [args[i] for i in kv])
        return ns, extra


# data options given as key=value on `poison` / `scan` -> the attribute their --flag alias fills
DATA_KEYS = {"data.name": "data", "data.path": "data_path", "data.image_size": "image_size", "seed": "seed",
             "data.captions.label_column": "label_column", "data.captions.test_path": "test_path"}
CAPTION_KEYS = ("image_column", "caption_column", "separator", "on_error", "test_fraction")


def split_data_options(args: argparse.Namespace, items: list[str]) -> list[str]:
    """Move the data options among ``key=value`` ``items`` onto ``args`` (as their flag aliases would) and return
    the rest; ``data.captions.{image_column,caption_column,separator,on_error,test_fraction}`` go to
    ``args.caption_options``; ``attack.params.`` prefixes are dropped."""
    rest: list[str] = []
    args.caption_options = dict(getattr(args, "caption_options", None) or {})
    for item in items:
        key, _, value = item.partition("=")
        key = key.strip()
        if key in DATA_KEYS:
            dest = DATA_KEYS[key]
            if dest in ("image_size", "seed"):
                try:
                    value = int(value)  # type: ignore[assignment]
                except ValueError:
                    raise ConfigError(f"{key}={value!r} must be an integer") from None
            setattr(args, dest, value)
        elif key.startswith("data.captions.") and key.split(".", 2)[2] in CAPTION_KEYS:
            args.caption_options[key.split(".", 2)[2]] = value
        elif key.startswith("data."):
            raise ConfigError(f"{key} is not a data option here; use one of: "
                              f"{', '.join([*DATA_KEYS, *('data.captions.' + k for k in CAPTION_KEYS)])}")
        else:
            rest.append(item[len("attack.params."):] if key.startswith("attack.params.") else item)
    if not getattr(args, "data", None):
        raise ConfigError("no data given; pass --data SOURCE (or data.name=SOURCE), e.g. --data cifar10-subset")
    return rest


def _names() -> dict[str, str]:
    from .attacks import ATTACKS
    from .data.captions.caption_readers import caption_source_names
    from .defenses import DEFENSES
    from .experiments.config import list_presets
    from .methods import METHODS

    return {"methods": ", ".join(METHODS.names()), "attacks": ", ".join(ATTACKS.names()),
            "defenses": ", ".join(DEFENSES.names()), "data": ", ".join(caption_source_names()),
            "presets": ", ".join(list_presets())}


HELP: dict[str, tuple[str, str, str]] = {  # name -> (description, example, choices shown)
    "run": ("Run dataset -> attack -> defense -> pretrain -> evaluate from a YAML config (a preset plus overrides); "
            "writes OUT/results.json, checkpoint.pt, encoder.safetensors + encoder.json.",
            "clpoison run my.yaml train.epochs=5 --out runs/x", "methods attacks defenses data presets"),
    "pretrain": ("Pretrain one method from its preset.", "clpoison pretrain simclr --preset small train.epochs=5",
                 "data"),
    "evaluate": ("kNN and linear-probe top-1 (CLIP runs: zero-shot, retrieval, eval.sets) of a run's checkpoint, "
                 "with its attack's metrics from its manifest.json; a clpoison encoder.safetensors, or a "
                 "torchvision-layout ResNet state dict trained elsewhere (weights_only).",
                 "clpoison evaluate runs/x/encoder.safetensors data.name=npz data.path=d.npz", "data"),
    "datasets": ("List the data sources or describe one.", "clpoison datasets describe npz --path d.npz", "data"),
    "presets": ("List presets, print one as written, or with --resolved the merged config it gives.",
                "clpoison presets simclr-small --resolved", "presets"),
    "poison": ("Write a poisoned copy of a dataset (npz | imagefolder for images; csv | wds for image-caption "
               "pairs) with manifest.json, trigger.png, a triggered test set and SHA256SUMS.",
               "clpoison poison carlini-backdoor --data pairs.csv --out OUT target=airplane poison_rate=0.01",
               "attacks data"),
    "scan": ("Score exactly the image-caption pairs given (every row, nothing held out) with a CLIP model; a CSV "
             "ranked by risk (lowest similarity first), the lowest 5% flagged unless --top-k / --risky-fraction.",
             "clpoison scan --reference runs/trusted --data OUT/train.csv --out risk.csv --manifest OUT/manifest.json",
             "data"),
    "verify": ("Check a `clpoison poison` export against its manifest and SHA256SUMS (every file, indices, trigger); "
               "the decoded training data is also checked against the manifest's fingerprint for npz and csv "
               "exports (imagefolder and wds exports: files only).", "clpoison verify OUT", ""),
    "demo": ("`demo [simclr]`: SimCLR small preset (kNN + linear probe); `demo clip`: CLIP small preset (zero-shot, "
             "retrieval), both on the bundled data.", "clpoison demo clip --out runs/demo-clip --overwrite", ""),
    "grid": ("Run every cell of a grid file (a base config plus axes: any config key -> list of values, and/or "
             "explicit cells), one after another, each a run folder DIR/cells/NAME; writes DIR/results.csv. An "
             "existing grid folder is resumed: finished cells of the same config are reused, changed ones re-run, "
             "failed ones recorded and retried.",
             "clpoison grid benchmarks/grids/carlini_small.yaml --out runs/grid_carlini", "attacks defenses presets"),
    "inspect": ("Is this encoder backdoored? DECREE trigger inversion on unlabelled shadow images: the smallest "
                "trigger that collapses every embedding, its PL1-norm (flagged below the threshold), mask / pattern "
                "PNGs, and for a CLIP the class zero-shot gives triggered images; key=value set DECREE parameters "
                "(lr, batch_size, max_epochs, threshold, seed, ...).",
                "clpoison inspect runs/x --data cifar10-subset --out runs/x_inspect", "data"),
    "report": ("Write report.html (self-contained) and report.md from a grid folder or run folders: the attack x "
               "defense table (mean +- std over seeds, confidence intervals) and plots.",
               "clpoison report runs/grid_carlini --out runs/grid_carlini/report", ""),
}


def add_command(sub: Any, name: str, names: dict[str, str], **kw: Any) -> argparse.ArgumentParser:
    """A sub-command parser with its description, example, the names it accepts, and ``--threads``."""
    desc, example, choices = HELP[name]
    lines = [f"example:\n  {example}"] + [f"{c}: {names[c]}" for c in choices.split()]
    sp = sub.add_parser(name, help=desc.split("; ")[0].split(". ")[0], description=desc, epilog="\n\n".join(lines),
                        formatter_class=argparse.RawDescriptionHelpFormatter, **kw)
    sp.add_argument("--threads", type=int, default=argparse.SUPPRESS, help="torch CPU threads (default: torch's)")
    return sp


def build_parser() -> argparse.ArgumentParser:
    """The ``clpoison`` parser; each sub-command's ``command`` names its function in :data:`clpoison.cli.COMMANDS`."""
    from . import __version__

    p = OneLineParser(prog="clpoison", description="Attacks and defenses for contrastive pretraining under data "
                      "poisoning: pretrain, poison, evaluate, scan, verify.")
    p.add_argument("--version", action="version", version=f"clpoison {__version__}")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    sub = p.add_subparsers(dest="command", required=True, parser_class=KeyValueParser)
    names = _names()

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.epochs=5")
        sp.add_argument("--out", help="output directory (refused if it exists, unless --overwrite)")
        sp.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
        sp.add_argument("--no-progress", action="store_true", help="no progress bar")

    sp = add_command(sub, "run", names)
    sp.add_argument("config", help="YAML config (may name a preset with `preset: NAME`)")
    common(sp)
    sp.add_argument("--no-resume", action="store_true", help="start over even if a partial run exists")
    sp.add_argument("--dry-run", action="store_true", help="print the resolved config, the data found, steps, memory "
                    "and a time estimate from a few measured steps (under torchrun / srun also the gradient "
                    "all-reduce); train nothing, write nothing")

    sp = add_command(sub, "pretrain", names)
    sp.add_argument("method", choices=["simclr", "mocov2", "byol", "clip"])
    sp.add_argument("--preset", default="small", choices=["small", "paper", "rn50-cc3m"],
                    help="small | paper (image SSL) | rn50-cc3m (CLIP)")
    common(sp)

    sp = add_command(sub, "evaluate", names)
    sp.add_argument("checkpoint", help="run directory, checkpoint.pt, encoder.safetensors (+ encoder.json), or a "
                                       "torchvision-layout ResNet state dict (.pt/.pth, loaded weights_only)")
    sp.add_argument("overrides", nargs="*", help="key=value overrides (e.g. data.name=npz data.path=...)")
    sp.add_argument("--out", help="write the metrics to this JSON file")
    sp.add_argument("--manifest", help="a poison manifest.json: also score its attack (encoder files: backdoor ASR; "
                                       "runs: default the run's own manifest.json)")
    sp.add_argument("--control", choices=["random-init"], default=None,
                    help="evaluate an untrained model of the run's architecture (same seed) instead: the control")

    sp = add_command(sub, "datasets", names)
    sp.add_argument("action", nargs="?", choices=["list", "describe"], default="list")
    sp.add_argument("name", nargs="?")
    sp.add_argument("--path")

    sp = add_command(sub, "presets", names)
    sp.add_argument("name", nargs="?")
    sp.add_argument("--resolved", action="store_true", help="print the merged, validated config the preset gives")

    sp = add_command(sub, "poison", names,
                     usage="clpoison poison ATTACK --data DATA --out DIR [key=value ...] [options]")
    sp.add_argument("attack", help="attack name, e.g. carlini-backdoor")
    sp.kv_dest = "params"  # key=value attack parameters and data options anywhere, e.g. trigger.size=4
    data_options(sp)
    sp.add_argument("--out", required=True, help="output directory (must not exist unless --overwrite)")
    sp.add_argument("--preset", help="take attack parameters from a preset or YAML (e.g. carlini-backdoor-small)")
    sp.add_argument("--format", choices=["npz", "imagefolder", "csv", "wds"],
                    help="export layout: image data npz (default) | imagefolder (train/CLASS/*.png); caption data "
                         "csv (default; open_clip's tab-separated filepath/title) | wds (webdataset tar shards)")
    sp.add_argument("--csv-separator", default="tab", help="csv format: tab (default, open_clip's) | comma | one character")
    sp.add_argument("--csv-paths", default="absolute", choices=["absolute", "relative"],
                    help="csv format: absolute image paths (default; open_clip reads them from any folder) or "
                         "relative to the CSV (then run open_clip from inside --out)")
    sp.add_argument("--overwrite", action="store_true")
    sp.add_argument("--device", default="auto", help="device for attacks that craft with a model (auto | cpu | cuda)")
    sp.add_argument("--no-progress", action="store_true", help="no progress bar while crafting")

    sp = add_command(sub, "scan", names)
    sp.add_argument("checkpoint", nargs="?", help="run directory or checkpoint.pt of a CLIP (or SafeCLIP) run; "
                                                  "optional with --reference")
    data_options(sp)
    sp.add_argument("--split", default="train", choices=["train", "test"])
    sp.add_argument("--out", required=True, help="CSV to write (atomically)")
    sp.add_argument("--manifest", help="poison manifest.json: check the data against it (row count, fingerprint), "
                                       "then report ROC-AUC, precision and recall")
    sp.add_argument("--reference", help="a CLIP run directory / checkpoint trained WITHOUT the poisons (e.g. on a "
                                        "trusted subset): rank by its similarities (recommended; docs/captions_protocol.md)")
    sp.add_argument("--risky-fraction", type=float, default=None,
                    help="risky = this share of the pairs with the lowest similarity (default 0.05)")
    sp.add_argument("--top-k", type=int, default=None, help="risky = the K pairs with the lowest similarity")
    sp.add_argument("--threshold", type=float, default=None,
                    help="risky = GMM clean posterior below this (opt-in; SafeCLIP's first split uses 0.9)")
    sp.add_argument("--score", nargs="+", default=["similarity"], metavar="SCORE",
                    help="similarity | kdist | dao | slof | lid, several allowed (one column each; the first ranks): "
                         "local-density scores of the image embeddings, higher = riskier (docs/audit.md)")
    sp.add_argument("--k", type=int, default=32, help="neighbours of the density scores (default 32, official)")
    sp.add_argument("--neighbour-batch", type=int, default=None, metavar="B",
                    help="take density neighbours from seeded batches of B images (the official code's in-batch "
                         "setting) instead of the whole set (default)")
    sp.add_argument("--direction", default="high", choices=["high", "two-sided"],
                    help="density scores: high = riskier (default, official) | two-sided: distance from the median "
                         "in either direction (robust z of log kdist/slof/lid, of dao), so a tight dense cluster "
                         "ranks first too; columns SCORE_two_sided (docs/audit.md)")

    sp = add_command(sub, "verify", names)
    sp.add_argument("dir", help="folder written by `clpoison poison`")

    sp = add_command(sub, "grid", names)
    sp.add_argument("grid", help="grid YAML (base: PRESET or a config mapping; axes: {KEY: [values]}; cells: [...])")
    sp.add_argument("overrides", nargs="*", help="key=value overrides for every cell, e.g. train.epochs=5")
    sp.add_argument("--out", help="grid folder (default runs/GRID_NAME); an existing grid folder is resumed")
    sp.add_argument("--overwrite", action="store_true", help="delete the grid folder and run every cell again")
    sp.add_argument("--jobs", type=int, default=1, help="cells run at once in worker processes (default 1; keep 1 "
                                                        "on a small CPU: each cell already uses every core)")
    sp.add_argument("--max-cells", type=int, default=None, help="stop after running this many cells (re-run to "
                                                                "continue)")
    sp.add_argument("--no-progress", action="store_true", help="accepted for symmetry: cells print one line per epoch")

    sp = add_command(sub, "report", names)
    sp.add_argument("dirs", nargs="+", help="grid folders, run folders, or folders of run folders")
    sp.add_argument("--out", required=True, help="report folder (refused if it exists, unless --overwrite)")
    sp.add_argument("--overwrite", action="store_true", help="replace an existing report folder")
    sp.add_argument("--title", default=None, help="report title (default: the grid's name)")
    sp.add_argument("--dose-axis", choices=("auto", "rate", "count"), default="auto",
                    help="x axis of the ASR plot: poison rate, poison count, or auto (counts when every run gives one)")

    sp = add_command(sub, "inspect", names)
    sp.add_argument("encoder", help="run folder, clip.safetensors, encoder.safetensors, or a torchvision-layout ResNet "
                                    "/ open_clip state dict (.pt/.pth, loaded weights_only)")
    sp.add_argument("overrides", nargs="*", help="DECREE parameters as key=value, e.g. max_epochs=200 threshold=0.1")
    data_options(sp)
    sp.add_argument("--split", default="test", choices=["train", "test"], help="split the shadow images come from")
    sp.add_argument("--shadow-size", type=int, default=1000, help="shadow images (seeded draw; default 1000)")
    sp.add_argument("--profile", choices=["cifar", "clip"], default=None,
                    help="official DECREE setting (default: clip for inputs of 224 px and more, else cifar)")
    sp.add_argument("--manifest", help="a backdoor's manifest.json: report the inverted mask's overlap with the "
                                       "real trigger's region and whether the suspected target is its target")
    sp.add_argument("--out", help="folder for inspect.json and the PNGs (refused if it exists, unless --overwrite)")
    sp.add_argument("--overwrite", action="store_true", help="replace an existing output folder")

    sp = add_command(sub, "demo", names)
    sp.add_argument("overrides", nargs="*", help="optional demo name (simclr | clip) then key=value overrides")
    sp.add_argument("--out", default=None, help="output directory (default runs/demo or runs/demo-clip)")
    sp.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    sp.add_argument("--no-progress", action="store_true")
    return p


def data_options(sp: argparse.ArgumentParser) -> None:
    """The data flags of ``poison`` / ``scan`` (aliases of the ``data.*`` / ``seed`` key=value options)."""
    sp.add_argument("--data", help="source name (cifar10-subset, captions-csv, ...) or a .csv/.tar/.npz/folder "
                                   "(alias of data.name=)")
    sp.add_argument("--data-path", help="path of the source named by --data (alias of data.path=)")
    sp.add_argument("--image-size", type=int, help="resize images to this size (default: native size; alias of "
                                                   "data.image_size=)")
    sp.add_argument("--label-column", help="CSV column holding class names (alias of data.captions.label_column=)")
    sp.add_argument("--test-path", help="CSV of the test split (default: a seeded hold-out; alias of "
                                        "data.captions.test_path=)")
    sp.add_argument("--seed", type=int, default=0, help="seed (alias of seed=)")
