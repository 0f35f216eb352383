"""Command-line interface: ``clpoison run | pretrain | evaluate | datasets | presets | poison | scan | verify | demo``.

Every user error prints one line ``error: ...`` naming the thing and the fix, and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

from .errors import ClpoisonError, ConfigError


def _echo(msg: str) -> None:
    print(msg, flush=True)


def _threads(n: Optional[int]) -> None:
    if n is not None and n < 1:
        raise ConfigError(f"--threads {n} must be a positive integer")
    if n:
        import torch

        torch.set_num_threads(n)


def cmd_run(args: argparse.Namespace) -> int:
    from .experiments.config import load_config
    from .experiments.runner import run_experiment
    from .report.tables import format_table

    cfg = load_config(args.config, args.overrides)
    out = Path(args.out or Path("runs") / cfg.name)
    if args.no_progress:
        cfg.train.progress = False
    res = run_experiment(cfg, out, overwrite=args.overwrite, resume=not args.no_resume, echo=_echo)
    print(format_table(res))
    print(f"wrote {out / 'results.json'}")
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from .experiments.config import build_config
    from .experiments.runner import run_experiment
    from .report.tables import format_table

    cfg = build_config({"preset": f"{args.method}-{args.preset}"}, args.overrides)
    if args.no_progress:
        cfg.train.progress = False
    out = Path(args.out or Path("runs") / f"{args.method}-{args.preset}")
    res = run_experiment(cfg, out, overwrite=args.overwrite, echo=_echo)
    print(format_table(res))
    print(f"wrote {out / 'results.json'}")
    return 0


def _read_checkpoint(arg: str, what: str = "clpoison") -> tuple[Path, dict]:
    """(path, checkpoint dict) of a run directory or checkpoint file; one ConfigError line if it cannot be read."""
    from .engine.checkpoint import read_checkpoint
    path = Path(arg)
    path = path / "checkpoint.pt" if path.is_dir() else path
    if not path.exists():
        raise ConfigError(f"checkpoint '{path}' does not exist; pass a run directory or its checkpoint.pt")
    ckpt = read_checkpoint(path)  # weights_only: refuses pickled code with one line
    missing = [k for k in ("method", "model", "config") if k not in ckpt]
    if missing or not isinstance(ckpt["config"], dict) or not isinstance(ckpt["model"], dict):
        raise ConfigError(f"checkpoint '{path}' lacks {missing or 'a model/config dict'}; is it a {what} checkpoint?")
    return path, ckpt


def _is_encoder_file(arg: str) -> bool:
    """True for an encoder file (``encoder.safetensors``, a folder holding one but no checkpoint.pt, or a ``.pt``/
    ``.pth`` whose dict is not a clpoison checkpoint); False for a run directory or clpoison checkpoint."""
    path = Path(arg)
    if path.is_dir():
        return not (path / "checkpoint.pt").exists() and (path / "encoder.safetensors").exists()
    if path.suffix == ".safetensors":
        return True
    if path.suffix in (".pt", ".pth") and path.is_file():
        from .engine.checkpoint import read_checkpoint

        try:
            ckpt = read_checkpoint(path)
        except ClpoisonError:
            return False  # the checkpoint route reports it
        return not ("config" in ckpt or "method" in ckpt)
    return False


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .experiments.config import build_config
    from .experiments.tasks import task_for
    from .utils.device import resolve_device
    from .utils.io import atomic_write_json, check_output_path

    if args.out:
        check_output_path(args.out)
    if _is_encoder_file(args.checkpoint):
        from .experiments.encoder_eval import evaluate_encoder_file

        metrics, cfg, spec = evaluate_encoder_file(args.checkpoint, args.overrides)
        print(json.dumps(metrics, indent=2))
        if args.out:
            atomic_write_json(args.out, {"encoder": str(args.checkpoint), "format": spec.get("format"),
                                         "metrics": metrics, "config": cfg.to_dict()})
        return 0
    path, ckpt = _read_checkpoint(args.checkpoint)
    cfg = build_config(dict(ckpt["config"]), args.overrides)
    task = task_for(cfg, resolve_device(cfg.device))  # stdout is the JSON
    method = task.method_from_checkpoint(ckpt, f"checkpoint '{path}'")
    metrics, _ = task.evaluate(method, task.load())
    print(json.dumps(metrics, indent=2))
    if args.out:
        atomic_write_json(args.out, {"checkpoint": str(path), "metrics": metrics, "config": cfg.to_dict()})
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from .data.image_readers import SOURCES, load_dataset

    if args.action == "list" or args.name is None:
        for name in SOURCES.names():
            doc = (SOURCES.get(name).__doc__ or "").strip().splitlines()[0]
            print(f"{name:16s} {doc}")
        return 0
    splits = load_dataset(args.name, args.path)
    print(json.dumps(splits.describe(), indent=2))
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from .experiments.config import list_presets, load_preset

    if args.name:
        import yaml

        print(yaml.safe_dump(load_preset(args.name), sort_keys=False))
        return 0
    for p in list_presets():
        print(p)
    return 0


DEMOS = {
    "simclr": ("simclr-small", "demo", "SimCLR small preset on the bundled CIFAR-10 subset"),
    "clip": ("clip-small", "demo-clip", "CLIP small preset on the bundled CIFAR-10 subset with generated stand-in captions"),
}


def cmd_demo(args: argparse.Namespace) -> int:
    from .experiments.config import build_config
    from .experiments.runner import run_experiment
    from .report.tables import format_table

    overrides = list(args.overrides)
    kind = overrides.pop(0) if overrides and overrides[0] in DEMOS else "simclr"
    preset, name, what = DEMOS[kind]
    cfg = build_config({"preset": preset, "name": name}, overrides)
    if args.no_progress:
        cfg.train.progress = False
    out = Path(args.out or ("runs/demo" if kind == "simclr" else "runs/demo-clip"))
    _echo(f"clpoison demo {kind}: {what} -> {out}")
    res = run_experiment(cfg, out, overwrite=True, echo=_echo)
    print(format_table(res))
    print(f"wrote {out / 'results.json'}")
    return 0


def cmd_poison(args: argparse.Namespace) -> int:
    """Export a poisoned dataset (data files + manifest.json + trigger.png); see clpoison.experiments.poison."""
    from .experiments.poison import poison_to_disk

    out, manifest = poison_to_disk(args.attack, args.data, args.out, args.params, args.seed, args.preset,
                                   args.data_path, args.image_size, args.label_column, args.test_path, args.overwrite,
                                   args.device, _echo, not args.no_progress,
                                   {"fmt": args.format, "csv_separator": _separator(args.csv_separator),
                                    "csv_paths": args.csv_paths})
    print(f"poisoned {len(manifest.get('poisoned_indices', []))} and added {len(manifest.get('added_indices', []))} "
          f"training samples; wrote {out} (manifest.json)")
    return 0


def _separator(name: str) -> str:
    """``tab`` / ``comma`` / ``\\t`` or one character -> the separator character."""
    return {"tab": "\t", "\\t": "\t", "comma": ","}.get(name, name)


def cmd_scan(args: argparse.Namespace) -> int:
    """Score every image–caption pair with a CLIP checkpoint; CSV ranked by risk (clpoison.defenses.safeclip_scan)."""
    from .attacks.manifest import manifest_poisons, read_manifest
    from .defenses.safeclip_scan import scan_to_csv, score_pairs
    from .experiments.config import build_config
    from .experiments.sources import load_source
    from .experiments.tasks import task_for
    from .utils.device import resolve_device
    from .utils.io import check_output_path

    check_output_path(args.out)
    path, ckpt = _read_checkpoint(args.checkpoint, "clpoison CLIP")
    try:
        cfg = build_config(dict(ckpt["config"]), [])
    except Exception as e:
        raise ConfigError(f"checkpoint '{path}' cannot be read ({type(e).__name__}); is it a clpoison CLIP checkpoint?") from None
    poisons = None
    if args.manifest:
        if not Path(args.manifest).exists():
            raise ConfigError(f"manifest '{args.manifest}' does not exist; check the path")
        poisons = manifest_poisons(read_manifest(args.manifest))
    task = task_for(cfg, resolve_device(cfg.device))  # stdout is the JSON
    if task.modality != "image-text":
        raise ConfigError(f"checkpoint '{path}' is a '{cfg.method.name}' run; `clpoison scan` needs a CLIP checkpoint")
    method = task.method_from_checkpoint(ckpt, f"checkpoint '{path}'")
    splits = load_source("captions", args.data, args.data_path, cfg.data.image_size or cfg.augment.out_size, args.seed)
    data = splits.train if args.split == "train" else splits.test
    sims, owner, texts = score_pairs(method.model, method.tokenizer, data, task.transform(),
                                     method.params.context_length, task.device, cfg.eval.batch_size)
    summary = scan_to_csv(args.out, sims, owner, texts, poisons, args.threshold)
    print(json.dumps({**summary, "checkpoint": str(path), "csv": str(args.out)}, indent=2))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Check a `clpoison poison` export against its manifest and SHA256SUMS (clpoison.attacks.verify)."""
    from .attacks.verify import verify_export
    from .experiments.sources import load_export

    root = Path(args.dir)
    verify_export(root)  # files, indices, trigger first: cheap, and nothing is decoded from a tampered folder
    print(json.dumps(verify_export(root, load_export(root)), indent=2))
    return 0


class _OneLineParser(argparse.ArgumentParser):
    """argparse parser whose usage errors are one ``error: ...`` line (exit 2), like every other input error."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"error: {self.prog}: {message}; see `{self.prog} --help`\n")


class _KeyValueParser(_OneLineParser):
    """Sub-command parser that accepts ``key=value`` items anywhere on the line (argparse alone fills a ``*``
    positional only once, so ``pretrain clip --preset small train.epochs=5`` would fail). They are collected into
    ``kv_dest`` (``overrides`` for config overrides, ``params`` for attack parameters)."""

    kv_dest = "overrides"

    def parse_known_args(self, args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        value_opts = {o for a in self._actions if a.option_strings and a.nargs != 0 for o in a.option_strings}
        kv = [i for i, a in enumerate(args)
              if "=" in a and not a.startswith("-") and (i == 0 or args[i - 1] not in value_opts)]
        ns, extra = super().parse_known_args([a for i, a in enumerate(args) if i not in kv], namespace)
        setattr(ns, self.kv_dest, list(getattr(ns, self.kv_dest, None) or []) + [args[i] for i in kv])
        return ns, extra


def build_parser() -> argparse.ArgumentParser:
    p = _OneLineParser(prog="clpoison", description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_KeyValueParser)

    def common(sp: argparse.ArgumentParser, out_required: bool = False) -> None:
        sp.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.epochs=5")
        sp.add_argument("--out", required=out_required, help="output directory")
        sp.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
        sp.add_argument("--no-progress", action="store_true", help="no progress bar")

    sp = sub.add_parser("run", help="run dataset → attack → defense → pretrain → evaluate from a YAML config")
    sp.add_argument("config", help="YAML config (may name a preset with `preset: NAME`)")
    common(sp)
    sp.add_argument("--no-resume", action="store_true", help="start over even if a partial run exists")
    sp.set_defaults(fn=cmd_run)

    sp = sub.add_parser("pretrain", help="pretrain one method from its preset")
    sp.add_argument("method", choices=["simclr", "mocov2", "byol", "clip"])
    sp.add_argument("--preset", default="small", choices=["small", "paper", "rn50-cc3m"],
                    help="small | paper (image SSL) | rn50-cc3m (CLIP)")
    common(sp)
    sp.set_defaults(fn=cmd_pretrain)

    sp = sub.add_parser("evaluate", help="kNN and linear-probe evaluation of a checkpoint or an encoder file")
    sp.add_argument("checkpoint", help="run directory, checkpoint.pt, encoder.safetensors (+ encoder.json), or a "
                                       "torchvision-layout ResNet state dict (.pt/.pth, loaded weights_only)")
    sp.add_argument("overrides", nargs="*", help="key=value overrides (e.g. data.name=npz data.path=...)")
    sp.add_argument("--out", help="write the metrics to this JSON file")
    sp.set_defaults(fn=cmd_evaluate)

    sp = sub.add_parser("datasets", help="list dataset sources or describe one")
    sp.add_argument("action", nargs="?", choices=["list", "describe"], default="list")
    sp.add_argument("name", nargs="?")
    sp.add_argument("--path")
    sp.set_defaults(fn=cmd_datasets)

    sp = sub.add_parser("presets", help="list presets or print one")
    sp.add_argument("name", nargs="?")
    sp.set_defaults(fn=cmd_presets)

    sp = sub.add_parser("poison", help="write a poisoned copy of a dataset (CSV+PNG or NPZ) with its manifest",
                        usage="clpoison poison ATTACK --data DATA --out DIR [key=value ...] [options]")
    sp.add_argument("attack", help="attack name, e.g. carlini-backdoor")
    sp.kv_dest = "params"  # key=value attack parameters anywhere, e.g. poison_rate=0.01 trigger.size=4
    sp.add_argument("--data", required=True, help="source name (cifar10-subset, captions-csv, ...) or a .csv/.tar/.npz/folder")
    sp.add_argument("--data-path", help="path of the source named by --data")
    sp.add_argument("--out", required=True, help="output directory (must not exist unless --overwrite)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--preset", help="take attack parameters from a preset or YAML (e.g. carlini-backdoor-small)")
    sp.add_argument("--image-size", type=int, help="resize images to this size")
    sp.add_argument("--label-column", help="CSV column holding class names (needed for targeted poisoning)")
    sp.add_argument("--test-path", help="CSV of the test split (default: a seeded hold-out)")
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
    sp.set_defaults(fn=cmd_poison)

    sp = sub.add_parser("scan", help="score image-caption pairs with a CLIP checkpoint; CSV ranked by risk (SafeCLIP GMM)")
    sp.add_argument("checkpoint", help="run directory or checkpoint.pt of a CLIP (or SafeCLIP) run")
    sp.add_argument("--data", required=True, help="source name (cifar10-subset, ...) or a .csv/.tar of pairs")
    sp.add_argument("--data-path", help="path of the source named by --data")
    sp.add_argument("--split", default="train", choices=["train", "test"])
    sp.add_argument("--out", required=True, help="CSV to write (atomically)")
    sp.add_argument("--manifest", help="poison manifest.json: report ROC-AUC, precision and recall")
    sp.add_argument("--threshold", type=float, default=0.9, help="risky = GMM clean posterior below this")
    sp.add_argument("--seed", type=int, default=0)
    sp.set_defaults(fn=cmd_scan)
    sp = sub.add_parser("verify", help="check a poisoned-dataset export against its manifest (file hashes, indices, "
                                       "trigger, data fingerprint)")
    sp.add_argument("dir", help="folder written by `clpoison poison`")
    sp.set_defaults(fn=cmd_verify)
    sp = sub.add_parser(
        "demo",
        help="`demo [simclr]`: SimCLR small preset (kNN + linear probe); `demo clip`: CLIP small preset (zero-shot, "
        "retrieval), both on the bundled data",
    )
    sp.add_argument("overrides", nargs="*", help="optional demo name (simclr | clip) then key=value overrides")
    sp.add_argument("--out", default=None, help="output directory (default runs/demo or runs/demo-clip)")
    sp.add_argument("--no-progress", action="store_true")
    sp.set_defaults(fn=cmd_demo)
    return p


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _threads(args.threads)
        return args.fn(args)
    except ClpoisonError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume from the last checkpoint", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
