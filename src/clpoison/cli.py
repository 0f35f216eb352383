"""Command-line interface: ``clpoison run | pretrain | evaluate | datasets | presets | demo``.

Every user error prints one line ``error: ...`` naming the thing and the fix, and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

from .errors import ClpoisonError


def _echo(msg: str) -> None:
    print(msg, flush=True)


def _threads(n: Optional[int]) -> None:
    if n:
        import torch

        torch.set_num_threads(n)


def cmd_run(args: argparse.Namespace) -> int:
    from .experiments.config import load_config
    from .experiments.runner import format_table, run_experiment

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
    from .experiments.runner import format_table, run_experiment

    cfg = build_config({"preset": f"{args.method}-{args.preset}"}, args.overrides)
    if args.no_progress:
        cfg.train.progress = False
    out = Path(args.out or Path("runs") / f"{args.method}-{args.preset}")
    res = run_experiment(cfg, out, overwrite=args.overwrite, echo=_echo)
    print(format_table(res))
    print(f"wrote {out / 'results.json'}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import torch

    from .errors import ConfigError
    from .experiments.config import build_config
    from .experiments.runner import build_method, evaluate_encoder, load_splits
    from .utils.device import resolve_device
    from .utils.io import atomic_write_json

    path = Path(args.checkpoint)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.exists():
        raise ConfigError(f"checkpoint '{path}' does not exist; pass a run directory or its checkpoint.pt")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        snapshot = ckpt["config"]
    except Exception as e:
        raise ConfigError(f"checkpoint '{path}' cannot be read ({type(e).__name__}); is it a clpoison checkpoint?") from None
    snapshot = {k: v for k, v in snapshot.items()}
    cfg = build_config(snapshot, args.overrides)
    device = resolve_device(cfg.device)
    method = build_method(cfg)
    method.load_state_dict(ckpt["model"])
    method.to(device)
    metrics, _ = evaluate_encoder(method.encoder, load_splits(cfg), cfg, device)
    print(json.dumps(metrics, indent=2))
    if args.out:
        atomic_write_json(args.out, {"checkpoint": str(path), "metrics": metrics, "config": cfg.to_dict()})
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from .data.datasets import SOURCES, load_dataset

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


def cmd_demo(args: argparse.Namespace) -> int:
    from .experiments.config import build_config
    from .experiments.runner import format_table, run_experiment

    cfg = build_config({"preset": "simclr-small", "name": "demo"}, args.overrides)
    if args.no_progress:
        cfg.train.progress = False
    out = Path(args.out)
    _echo(f"clpoison demo: SimCLR small preset on the bundled CIFAR-10 subset -> {out}")
    res = run_experiment(cfg, out, overwrite=True, echo=_echo)
    print(format_table(res))
    print(f"wrote {out / 'results.json'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clpoison", description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    sub = p.add_subparsers(dest="command", required=True)

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
    sp.add_argument("method", choices=["simclr", "mocov2", "byol"])
    sp.add_argument("--preset", default="small", choices=["small", "paper"])
    common(sp)
    sp.set_defaults(fn=cmd_pretrain)

    sp = sub.add_parser("evaluate", help="kNN and linear-probe evaluation of a checkpoint")
    sp.add_argument("checkpoint", help="run directory or checkpoint.pt")
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

    sp = sub.add_parser("demo", help="SimCLR small preset on the bundled data, evaluated by kNN and linear probe")
    sp.add_argument("overrides", nargs="*")
    sp.add_argument("--out", default="runs/demo")
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
