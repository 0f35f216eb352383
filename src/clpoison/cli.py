"""Command-line interface: ``clpoison run | pretrain | evaluate | datasets | presets | poison | scan | verify | demo |
grid | report | inspect``.

Every user error prints one line ``error: ...`` naming the thing and the fix, and exits with status 2. The parser
(descriptions, examples, ``key=value`` items, ``--threads`` anywhere) is :mod:`clpoison.cli_args`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Optional

from .cli_args import build_parser, split_data_options
from .errors import ClpoisonError, ConfigError


def _echo(msg: str) -> None:
    print(msg, flush=True)


MAX_THREADS = 1024  # beyond this torch's thread pools fail in native code


def _threads(n: Optional[int]) -> None:
    if n is not None and not 1 <= n <= MAX_THREADS:
        raise ConfigError(f"--threads {n} must be an integer in 1..{MAX_THREADS}")
    if n:
        import torch

        torch.set_num_threads(n)


def cmd_run(args: argparse.Namespace) -> int:
    from .experiments.config import load_config
    from .experiments.runner import run_experiment

    cfg = load_config(args.config, args.overrides)
    out = Path(args.out or Path("runs") / cfg.name)
    if args.no_progress:
        cfg.train.progress = False
    if args.dry_run:
        from .experiments.plan import format_plan, plan_experiment
        from .utils.dist import is_main

        plan = plan_experiment(cfg, echo=_echo)  # under torchrun: every process, joined to time the all-reduce
        if is_main():
            print(format_plan(plan))
        return 0
    res = run_experiment(cfg, out, overwrite=args.overwrite, resume=not args.no_resume, echo=_echo)
    _print_run(res, out)
    return 0


def _print_run(res: dict, out: Path) -> None:
    """The run's table, printed once: by rank 0 when torchrun started several processes."""
    from .report.tables import format_table
    from .utils.dist import is_main

    if is_main():
        print(format_table(res))
        print(f"wrote {out / 'results.json'}")


def cmd_pretrain(args: argparse.Namespace) -> int:
    from .experiments.config import build_config
    from .experiments.runner import run_experiment

    cfg = build_config({"preset": f"{args.method}-{args.preset}"}, args.overrides)
    if args.no_progress:
        cfg.train.progress = False
    out = Path(args.out or Path("runs") / f"{args.method}-{args.preset}")
    res = run_experiment(cfg, out, overwrite=args.overwrite, echo=_echo)
    _print_run(res, out)
    return 0


def _read_checkpoint(arg: str, what: str = "clpoison") -> tuple[Path, dict]:
    """(path, checkpoint dict) of a run directory or checkpoint file; one ConfigError line if it cannot be read."""
    from .engine.checkpoint import read_checkpoint
    from .run_folder import checkpoint_file
    path = checkpoint_file(arg)
    ckpt = read_checkpoint(path)  # weights_only: refuses pickled code with one line
    missing = [k for k in ("method", "model", "config") if k not in ckpt]
    if missing or not isinstance(ckpt["config"], dict) or not isinstance(ckpt["model"], dict):
        raise ConfigError(f"checkpoint '{path}' lacks {missing or 'a model/config dict'}; is it a {what} checkpoint?")
    return path, ckpt


def _is_encoder_file(arg: str) -> bool:
    """True for an encoder file (``encoder.safetensors``, a folder holding one but no checkpoint.pt, or a ``.pt``/
    ``.pth`` whose dict is not a clpoison checkpoint); False for a run directory or clpoison checkpoint."""
    from .run_folder import CHECKPOINT, ENCODER, holds

    path = Path(arg)
    if path.is_dir():
        return not holds(path, CHECKPOINT) and holds(path, ENCODER)
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


def _pretrained_clip(arg: str, overrides: list[str]) -> bool:
    """Whether ``evaluate`` scores ``arg`` as a pretrained CLIP (zero-shot, ASR): a Hugging Face CLIP directory, or an
    open_clip state dict with both towers and its tokenizer (beside it or ``method.params.tokenizer=``); without a
    tokenizer an open_clip file is evaluated as an image encoder, and that is said."""
    from .models.hf_clip import is_hf_clip
    from .models.pretrained import is_openclip_clip, openclip_tokenizer

    if is_hf_clip(arg):
        return True
    if not is_openclip_clip(arg):
        return False
    if any(o.startswith("method.params.tokenizer=") for o in overrides) or openclip_tokenizer(arg) is not None:
        return True
    print(f"note: no tokenizer beside '{arg}', so its text tower is not used: evaluating the image tower (give open_clip's "
          "bpe_simple_vocab_16e6.txt.gz, or vocab.json + merges.txt, beside it for zero-shot)", file=sys.stderr)
    return False


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .utils.io import atomic_write_json, check_output_path

    if args.out:
        check_output_path(args.out, inputs=[args.manifest, args.overrides], around=[args.checkpoint])
    pretrained = _pretrained_clip(args.checkpoint, args.overrides)
    if not pretrained and _is_encoder_file(args.checkpoint):
        if args.control:
            raise ConfigError("--control random-init is for a run directory / checkpoint.pt (it rebuilds the run's "
                              "architecture untrained)")
        from .experiments.encoder_file_eval import evaluate_encoder_file

        metrics, cfg, spec = evaluate_encoder_file(args.checkpoint, args.overrides, args.manifest)
        print(json.dumps(metrics, indent=2))
        if args.out:
            atomic_write_json(args.out, {"encoder": str(args.checkpoint), "format": spec.get("format"),
                                         "metrics": metrics, "config": cfg.to_dict()})
        return 0
    from .experiments.run_eval import evaluate_run

    if pretrained:  # a Hugging Face CLIP directory or an open_clip model with both towers (docs/audit.md)
        from .experiments.scan import pretrained_checkpoint

        path, ckpt = Path(args.checkpoint), pretrained_checkpoint(args.checkpoint)
    else:
        path, ckpt = _read_checkpoint(args.checkpoint)
    out = evaluate_run(path, ckpt, args.overrides, args.manifest, args.control)
    print(json.dumps(out["metrics"], indent=2))
    if args.out:
        atomic_write_json(args.out, out)
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from .data.captions.caption_readers import CaptionDataConfig, load_caption_splits
    from .data.captions.caption_source_info import FILE_SOURCE_INFO
    from .data.image_readers import SOURCES, load_dataset

    if args.action == "list" or args.name is None:
        for name in SOURCES.names():
            doc = (SOURCES.get(name).__doc__ or "").strip().splitlines()[0]
            print(f"{name:16s} {doc}")
        for name, info in FILE_SOURCE_INFO.items():
            print(f"{name:16s} {info['summary']}")
        return 0
    if args.name in FILE_SOURCE_INFO:  # a caption source: what it reads, or with --path the data it gives
        if not args.path:
            print(json.dumps({"name": args.name, **FILE_SOURCE_INFO[args.name]}, indent=2))
            return 0
        splits = load_caption_splits(args.name, args.path, CaptionDataConfig(), None, 0)
        print(json.dumps(splits.describe(), indent=2))
        return 0
    splits = load_dataset(args.name, args.path)
    print(json.dumps(splits.describe(), indent=2))
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from .experiments.config import list_presets, load_preset

    if args.name:
        import yaml

        if args.resolved:
            from .experiments.config import build_config

            print(yaml.safe_dump(build_config({"preset": args.name}, []).to_dict(), sort_keys=False))
        else:
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
    res = run_experiment(cfg, out, overwrite=args.overwrite, echo=_echo)
    print(format_table(res))
    print(f"wrote {out / 'results.json'}")
    return 0


def cmd_poison(args: argparse.Namespace) -> int:
    """Export a poisoned dataset (data files + manifest.json + trigger.png); see clpoison.experiments.poison."""
    from .experiments.poison import poison_to_disk

    params = split_data_options(args, args.params)
    out, manifest = poison_to_disk(args.attack, args.data, args.out, params, args.seed, args.preset,
                                   args.data_path, args.image_size, args.label_column, args.test_path, args.overwrite,
                                   args.device, _echo, not args.no_progress,
                                   {"fmt": args.format, "csv_separator": _separator(args.csv_separator),
                                    "csv_paths": args.csv_paths}, _caption_options(args))
    print(f"poisoned {len(manifest.get('poisoned_indices', []))} and added {len(manifest.get('added_indices', []))} "
          f"training samples; wrote {out} (manifest.json)")
    return 0


def _caption_options(args: argparse.Namespace) -> dict:
    """``data.captions.*`` reader options given as key=value (separator names like ``tab`` allowed)."""
    opts = dict(args.caption_options)
    if "separator" in opts:
        opts["separator"] = _separator(opts["separator"])
    if "test_fraction" in opts:
        try:
            opts["test_fraction"] = float(opts["test_fraction"])
        except ValueError:
            raise ConfigError(f"data.captions.test_fraction={opts['test_fraction']!r} must be a number") from None
    return opts


def _separator(name: str) -> str:
    """``tab`` / ``comma`` / ``\\t`` or one character -> the separator character."""
    return {"tab": "\t", "\\t": "\t", "comma": ","}.get(name, name)


def cmd_scan(args: argparse.Namespace) -> int:
    """Score exactly the image–caption pairs given with a CLIP model (``--reference``, a model trained without the
    poisons, and/or the checkpoint); CSV ranked by risk (clpoison.experiments.scan, clpoison.audit.data_scan)."""
    from .experiments.scan import scan_data
    from .utils.io import check_output_path

    rest = split_data_options(args, list(args.overrides))
    if rest:
        raise ConfigError(f"`clpoison scan` takes data options (data.name=, data.path=, data.captions.*=, seed=) as "
                          f"key=value, not '{rest[0]}'")
    check_output_path(args.out, inputs=[args.data, args.data_path, args.test_path, args.manifest, args.overrides],
                      around=[args.checkpoint, args.reference])
    summary = scan_data(args.out, args.data, checkpoint=args.checkpoint, reference=args.reference,
                        manifest=args.manifest, data_path=args.data_path, image_size=args.image_size, seed=args.seed,
                        label_column=args.label_column, test_path=args.test_path,
                        caption_options=_caption_options(args), split=args.split, risky_fraction=args.risky_fraction,
                        top_k=args.top_k, threshold=args.threshold, scores=args.score, k=args.k,
                        neighbour_batch=args.neighbour_batch, direction=args.direction)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Check a `clpoison poison` export against its manifest and SHA256SUMS (clpoison.poisoned.verify)."""
    from .poisoned.verify import verify_export
    from .experiments.sources import load_export

    root = Path(args.dir)
    verify_export(root)  # files, indices, trigger first: cheap, and nothing is decoded from a tampered folder
    print(json.dumps(verify_export(root, load_export(root)), indent=2))
    return 0


def cmd_grid(args: argparse.Namespace) -> int:
    """Run a grid of configs (clpoison.experiments.grid); each cell a run folder, the table in DIR/results.csv."""
    from .experiments.grid import read_grid, run_grid

    if args.max_cells is not None and args.max_cells < 0:
        raise ConfigError(f"--max-cells {args.max_cells} must be >= 0")
    out = Path(args.out or Path("runs") / read_grid(args.grid)["name"])
    state = run_grid(args.grid, out, args.overrides, jobs=args.jobs, max_cells=args.max_cells,
                     overwrite=args.overwrite, echo=_echo)
    return 1 if any(c["status"] == "failed" for c in state["cells"]) else 0


def cmd_report(args: argparse.Namespace) -> int:
    """report.html + report.md of grid / run folders (clpoison.report.document)."""
    from .report.document import write_report

    if args.overrides:
        raise ConfigError(f"`clpoison report` takes folders, not key=value items ('{args.overrides[0]}')")
    html = write_report(args.dirs, args.out, title=args.title, overwrite=args.overwrite, dose_axis=args.dose_axis)
    print(f"wrote {html} and {html.with_name('report.md')}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    """DECREE trigger inversion of an encoder: is it backdoored? (clpoison.experiments.inspect)"""
    from .experiments.config import apply_overrides
    from .experiments.inspect import inspect_encoder

    if not args.data:
        raise ConfigError("no shadow data given; pass --data SOURCE (e.g. --data cifar10-subset) or --data PATH")
    params = apply_overrides({}, [o.removeprefix("decree.") for o in args.overrides])  # DECREE parameters
    summary = inspect_encoder(args.encoder, args.data, args.out, data_path=args.data_path, image_size=args.image_size,
                              split=args.split, shadow_size=args.shadow_size, seed=args.seed, manifest=args.manifest,
                              profile=args.profile, params=params, overwrite=args.overwrite, echo=_echo)
    print(json.dumps({k: v for k, v in summary.items() if k not in ("trace", "params", "encoder_info")}, indent=2))
    if args.out:
        print(f"wrote {Path(args.out) / 'inspect.json'}")
    return 0


COMMANDS = {"run": cmd_run, "pretrain": cmd_pretrain, "evaluate": cmd_evaluate, "datasets": cmd_datasets,
            "presets": cmd_presets, "poison": cmd_poison, "scan": cmd_scan, "verify": cmd_verify, "demo": cmd_demo,
            "grid": cmd_grid, "report": cmd_report, "inspect": cmd_inspect}


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _threads(args.threads)
        return COMMANDS[args.command](args)
    except ClpoisonError as e:
        print(f"error: {e.cli_message or e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `clpoison presets X --resolved | head`: the reader stopped; nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume from the last checkpoint", file=sys.stderr)
        return 130
    finally:
        from .utils.dist import destroy

        destroy()  # the torchrun process group, if a run joined one


if __name__ == "__main__":
    raise SystemExit(main())
