"""SimCLR, MoCo v2 and BYOL small presets on the bundled CIFAR-10 subset, over several seeds.

For each method and seed it runs the real pipeline (:func:`clpoison.experiments.runner.run_experiment`) and records
kNN top-1, linear-probe top-1, the random-init kNN control and the wall time; the JSON holds per-seed values and
mean ± std.

Usage: ``python benchmarks/ssl_small.py --out runs/bench/ssl_small.json --seeds 3 [--methods simclr,mocov2,byol]``
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from clpoison.experiments.bench import stats
from clpoison.experiments.config import build_config
from clpoison.experiments.runner import run_experiment
from clpoison.utils.io import atomic_write_json

METRICS = ("knn_top1", "linear_top1", "knn_top1_random_init")


def summarize(values: list[float]) -> dict:
    """:func:`clpoison.experiments.bench.stats` (mean, std, per-seed values) rounded to 4 digits."""
    st = stats(values)
    return {"mean": round(st["mean"], 4), "std": round(st["std"], 4), "per_seed": [round(v, 4) for v in st["per_seed"]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--methods", default="simclr,mocov2,byol")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("overrides", nargs="*", help="key=value overrides applied to every run")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    res: dict = {"seeds": args.seeds, "overrides": args.overrides}
    for m in args.methods.split(","):
        rows = {k: [] for k in METRICS + ("wall_s",)}
        for seed in range(args.seeds):
            cfg = build_config({"preset": f"{m}-small"}, [f"seed={seed}", "train.progress=false", *args.overrides])
            with tempfile.TemporaryDirectory() as tmp:
                t = time.perf_counter()
                r = run_experiment(cfg, Path(tmp) / "run")
                rows["wall_s"].append(time.perf_counter() - t)
            for k in METRICS:
                rows[k].append(r["metrics"][k])
            print(m, seed, {k: round(v[-1], 4) for k, v in rows.items()}, flush=True)
        res[m] = {k: summarize(v) for k, v in rows.items()}
        res[m]["preset"] = f"{m}-small"
    res["environment"] = {"threads": torch.get_num_threads(), "torch": torch.__version__}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, res)
    print(json.dumps({m: {k: res[m][k]["mean"] for k in METRICS} for m in args.methods.split(",")}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
