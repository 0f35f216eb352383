"""Carlini & Terzis attacks on the CLIP small preset: backdoor poison rate → ASR, and targeted poisoning.

For every seed it trains (presets ``carlini-backdoor-small`` / ``carlini-targeted-small``, i.e. ``clip-small``):

* one poisoned model per backdoor rate (default 0.5%, 1%, 2% of the 5,438 bundled pairs);
* one targeted-poisoning model (16 victims from the test split, 5 pairs each);
* one clean model, on which the same trigger (backdoor control) and the same victims (targeted control) are
  evaluated — one run serves both controls (attack ``carlini-control``; its config is
  :func:`_rows.carlini_clean_control`, shared with ``safeclip_small.py``).

and writes ``--out`` (JSON, means over seeds plus per-seed lists) and a PNG plot of poison rate → ASR next to it.
The comparison is the grid ``benchmarks/grids/carlini_small.yaml`` (the one source of the runs; ``--seeds`` /
``--rates`` / ``--no-targeted`` applied) plus :func:`summarise`: the cells run into ``--work`` (``WORK/cells/NAME``,
``WORK/results.csv`` the table of every run; finished runs are reused), then ``summarise`` turns them into the JSON.
The same runs from the command line, summarised afterwards:

    python benchmarks/carlini_small.py --out runs/carlini_small.json --seeds 3
    clpoison grid benchmarks/grids/carlini_small.yaml --out runs/grid_carlini
    python benchmarks/carlini_small.py --out runs/carlini_small.json --rates 0.001,0.0025,0.005,0.01,0.02 \
        --work runs/grid_carlini --summarise-only
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from clpoison.experiments.config import load_preset
from clpoison.experiments.grid import read_grid
from clpoison.report.plots import curve_plot

from _harness import GRIDS, comparison_parser, mean, run_comparison, script_main, start, write_result

GRID = GRIDS / "carlini_small.yaml"


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
    ap = comparison_parser(__doc__, seeds=3, out_help="JSON result file (the plot goes next to it as .png)")
    ap.add_argument("--rates", default="0.005,0.01,0.02")
    ap.add_argument("--no-targeted", action="store_true", help="skip the targeted-poisoning runs (quick look)")
    args = ap.parse_args()
    out, work = start(args)
    rates = [float(r) for r in args.rates.split(",")]
    t0 = time.time()
    runs = run_comparison(grid_spec(args.seeds, rates, not args.no_targeted), work, args.overrides,
                          args.summarise_only)
    result = summarise(runs, list(range(args.seeds)), rates, not args.no_targeted)
    write_result(out, {**result, "overrides": args.overrides, "wall_s": round(time.time() - t0, 1)})
    plot(result, rates, out.with_suffix(".png"))


def summarise(runs: dict[str, dict], seeds: list[int], rates: list[float], targeted: bool) -> dict:
    """The JSON of the comparison (without ``overrides`` and ``wall_s``) from ``{cell name: results.json}``."""
    def metrics(name: str) -> dict:
        return runs[name]["metrics"]

    bd_params = load_preset("carlini-backdoor-small")["attack"]["params"]
    tg_params = load_preset("carlini-targeted-small")["attack"]["params"]
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
        if targeted:
            m = metrics(f"targeted_s{s}")
            per["tg"].append(m["targeted_success_rate"])
            per["tg_k"].append(m["targeted_successes"])
            per["tg_zs"].append(m["zeroshot_top1"])
    one = "0.01" if "0.01" in per["zs"] else str(rates[len(rates) // 2])
    return {
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
        "seeds": seeds,
    }


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
    script_main(main)
