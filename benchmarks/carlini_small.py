"""Carlini & Terzis attacks on the CLIP small preset: backdoor poison rate → ASR, and targeted poisoning.

For every seed it trains (presets ``carlini-backdoor-small`` / ``carlini-targeted-small``, i.e. ``clip-small``):

* one poisoned model per backdoor rate (default 0.5%, 1%, 2% of the 5,438 bundled pairs);
* one targeted-poisoning model (16 victims from the test split, 5 pairs each);
* one clean model, on which the same trigger (backdoor control) and the same victims (targeted control) are
  evaluated — one run serves both controls (attack ``carlini-control``; its config is
  :func:`clpoison.experiments.bench.carlini_clean_control`, shared with ``safeclip_small.py``).

and writes ``--out`` (JSON, means over seeds plus per-seed lists) and a PNG plot of poison rate → ASR next to it.
The runs are the cells of the grid ``benchmarks/grids/carlini_small.yaml`` (with ``--seeds`` / ``--rates`` /
``--no-targeted`` applied), run by :func:`clpoison.experiments.grid.run_grid` into ``--work`` (``WORK/cells/NAME``;
``WORK/results.csv`` is the table of every run); finished runs are reused when the script is re-run. The same grid
from the command line: ``clpoison grid benchmarks/grids/carlini_small.yaml --out DIR``.

    python benchmarks/carlini_small.py --out runs/carlini_small.json --seeds 3
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch

from clpoison.experiments.bench import mean, work_dir
from clpoison.experiments.config import load_preset
from clpoison.experiments.grid import read_grid, run_grid
from clpoison.report.plots import curve_plot
from clpoison.utils.io import atomic_write_json

ECHO = partial(print, flush=True)  # a fresh run's line shows at once in a log file
GRID = Path(__file__).resolve().parent / "grids" / "carlini_small.yaml"


def grid_spec(seeds: int, rates: list[float], targeted: bool) -> dict:
    """``benchmarks/grids/carlini_small.yaml`` with the script's seeds and backdoor rates (and without the
    targeted cells when ``targeted`` is false)."""
    spec = read_grid(GRID)
    spec["axes"]["seed"] = list(range(seeds))
    cells = []
    for c in spec["cells"]:
        if c["name"].startswith("backdoor_"):
            c["axes"]["attack.params.poison_rate"] = rates
        if targeted or not c["name"].startswith("targeted_"):
            cells.append(c)
    spec["cells"] = cells
    return spec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSON result file (the plot goes next to it as .png)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--rates", default="0.005,0.01,0.02")
    ap.add_argument("--work", default=None, help="grid folder (default: OUT without suffix + '_runs'); the runs are "
                                                 "its cells/NAME")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-targeted", action="store_true", help="skip the targeted-poisoning runs (quick look)")
    ap.add_argument("overrides", nargs="*", help="config overrides for every run, e.g. train.epochs=10")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    work = work_dir(out, args.work)
    rates = [float(r) for r in args.rates.split(",")]
    bd_params = load_preset("carlini-backdoor-small")["attack"]["params"]
    tg_params = load_preset("carlini-targeted-small")["attack"]["params"]
    seeds = list(range(args.seeds))
    t0 = time.time()
    state = run_grid(grid_spec(args.seeds, rates, not args.no_targeted), work, args.overrides, echo=ECHO)
    failed = [c for c in state["cells"] if c["status"] not in ("done", "reused")]
    if failed:
        raise SystemExit(f"error: {len(failed)} runs did not finish ({failed[0]['name']}: {failed[0]['error']}); "
                         "fix it and re-run the same command (finished runs are reused)")

    def metrics(name: str) -> dict:
        return json.loads((work / "cells" / name / "results.json").read_text())["metrics"]

    per: dict[str, Any] = {"asr": {str(r): [] for r in rates}, "zs": {str(r): [] for r in rates},
                           "z": {str(r): [] for r in rates}, "clean_asr": [], "clean_zs": [], "clean_z": [],
                           "tg": [], "tg_k": [], "tg_zs": [], "clean_tg": [], "clean_tg_k": []}
    for s in seeds:
        m = metrics(f"clean_s{s}")
        per["clean_asr"].append(m["asr"])
        per["clean_zs"].append(m["zeroshot_top1"])
        per["clean_z"].append(m["backdoor_zscore"])
        per["clean_tg"].append(m["targeted_success_rate"])
        per["clean_tg_k"].append(m["targeted_successes"])
        for r in rates:
            m = metrics(f"backdoor_{r}_s{s}")
            per["asr"][str(r)].append(m["asr"])
            per["zs"][str(r)].append(m["zeroshot_top1"])
            per["z"][str(r)].append(m["backdoor_zscore"])
        if not args.no_targeted:
            m = metrics(f"targeted_s{s}")
            per["tg"].append(m["targeted_success_rate"])
            per["tg_k"].append(m["targeted_successes"])
            per["tg_zs"].append(m["zeroshot_top1"])
    one = "0.01" if "0.01" in per["zs"] else str(rates[len(rates) // 2])
    result = {
        "backdoor": {
            "asr_by_rate": {r: mean(v) for r, v in per["asr"].items()},
            "asr_by_rate_per_seed": per["asr"],
            "asr_clean_model": mean(per["clean_asr"]), "asr_clean_model_per_seed": per["clean_asr"],
            "zeroshot_top1": mean(per["zs"][one]), "zeroshot_top1_per_seed": per["zs"][one],
            "zeroshot_top1_by_rate": {r: mean(v) for r, v in per["zs"].items()},
            "zeroshot_top1_clean_model": mean(per["clean_zs"]), "zeroshot_top1_clean_model_per_seed": per["clean_zs"],
            "zscore_by_rate": {r: mean(v) for r, v in per["z"].items()}, "zscore_clean_model": mean(per["clean_z"]),
            "target": bd_params["target"], "trigger": bd_params["trigger"],
        },
        "targeted": {
            "success_rate": mean(per["tg"]), "success_rate_per_seed": per["tg"], "successes_per_seed": per["tg_k"],
            "success_rate_clean_model": mean(per["clean_tg"]), "success_rate_clean_model_per_seed": per["clean_tg"],
            "successes_clean_model_per_seed": per["clean_tg_k"],
            "zeroshot_top1": mean(per["tg_zs"]),
            "targets": tg_params["num_targets"], "pairs_per_target": tg_params["pairs_per_target"],
        },
        "seeds": seeds, "overrides": args.overrides, "wall_s": round(time.time() - t0, 1),
    }
    atomic_write_json(out, result)
    plot(result, rates, out.with_suffix(".png"))
    print(json.dumps(result, indent=2))


def plot(result: dict, rates: list[float], path: Path) -> None:
    """Poison rate (the clean model at 0%) → backdoor ASR: the mean over seeds and each seed's points."""
    b = result["backdoor"]
    xs = [0.0] + [100 * r for r in rates]
    curve_plot(path, {"mean over seeds": (xs, [b["asr_clean_model"]] + [b["asr_by_rate"][str(r)] for r in rates])},
               "poisoned pairs (% of training data)", f"zero-shot ASR (target '{b['target']}')",
               "Carlini & Terzis backdoor, CLIP small preset", ylim=(0, 1),
               points=[(xs, [b["asr_clean_model_per_seed"][i]] + [b["asr_by_rate_per_seed"][str(r)][i] for r in rates])
                       for i in range(len(result["seeds"]))], dpi=120)


if __name__ == "__main__":
    main()
