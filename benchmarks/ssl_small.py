"""SimCLR, MoCo v2 and BYOL small presets on the bundled CIFAR-10 subset, over several seeds.

The comparison is the grid ``benchmarks/grids/ssl_small.yaml`` (cells ``{method}_s{seed}``, one per preset and seed;
``--methods`` / ``--seeds`` pick a part) plus :func:`summarise`: kNN top-1, linear-probe top-1, the random-init kNN
control and the wall time of each run (``timings.total_s``), per-seed values and mean ± std. The runs are kept in
``--work`` (``WORK/cells/NAME``) and reused; ``clpoison grid benchmarks/grids/ssl_small.yaml --out DIR`` makes the
same runs, which ``--work DIR --summarise-only`` summarises.

Usage: ``python benchmarks/ssl_small.py --out runs/bench/ssl_small.json --seeds 3 [--methods simclr,mocov2,byol]``
"""

from __future__ import annotations

import torch

from clpoison.errors import ConfigError
from clpoison.experiments.grid import read_grid

from _harness import GRIDS, comparison_parser, run_comparison, script_main, seed_axis, start, stats, write_result

GRID = GRIDS / "ssl_small.yaml"
METRICS = ("knn_top1", "linear_top1", "knn_top1_random_init")


def grid_spec(seeds: int, methods: list[str]) -> dict:
    """The grid file's cells of ``methods`` (presets ``{method}-small``) over ``seeds``."""
    spec = seed_axis(read_grid(GRID), seeds)
    known = [c["preset"].removesuffix("-small") for c in spec["cells"]]
    if set(methods) - set(known):
        raise ConfigError(f"--methods: unknown method {sorted(set(methods) - set(known))[0]!r}; choose from "
                          f"{', '.join(known)}")
    spec["cells"] = [c for c in spec["cells"] if c["preset"].removesuffix("-small") in methods]
    return spec


def summarize(values: list[float]) -> dict:
    """:func:`_harness.stats` (mean, std, per-seed values) rounded to 4 digits."""
    st = stats(values)
    return {"mean": round(st["mean"], 4), "std": round(st["std"], 4), "per_seed": [round(v, 4) for v in st["per_seed"]]}


def summarise(runs: dict[str, dict], seeds: int, methods: list[str]) -> dict:
    """``{method: {metric: summarize, "wall_s": ..., "preset"}}`` from ``{cell name: results.json}``."""
    res: dict = {}
    for m in methods:
        got = [runs[f"{m}_s{s}"] for s in range(seeds)]
        res[m] = {k: summarize([r["metrics"][k] for r in got]) for k in METRICS}
        res[m]["wall_s"] = summarize([r["timings"]["total_s"] for r in got])
        res[m]["preset"] = f"{m}-small"
    return res


def main() -> None:
    ap = comparison_parser(__doc__, seeds=3)
    ap.add_argument("--methods", default="simclr,mocov2,byol")
    args = ap.parse_args()
    out, work = start(args)
    methods = args.methods.split(",")
    runs = run_comparison(grid_spec(args.seeds, methods), work, args.overrides, args.summarise_only)
    res = {"seeds": args.seeds, "overrides": args.overrides, **summarise(runs, args.seeds, methods),
           "environment": {"threads": torch.get_num_threads(), "torch": torch.__version__}}
    write_result(out, res, {m: {k: res[m][k]["mean"] for k in METRICS} for m in methods})
    print(f"wrote {out}")


if __name__ == "__main__":
    script_main(main)
