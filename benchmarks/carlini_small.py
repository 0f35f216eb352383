"""Carlini & Terzis attacks on the CLIP small preset: backdoor poison rate → ASR, and targeted poisoning.

For every seed it trains (presets ``carlini-backdoor-small`` / ``carlini-targeted-small``, i.e. ``clip-small``):

* one poisoned model per backdoor rate (default 0.5%, 1%, 2% of the 5,438 bundled pairs);
* one targeted-poisoning model (16 victims from the test split, 5 pairs each);
* one clean model, on which the same trigger (backdoor control) and the same victims (targeted control) are
  evaluated — one run serves both controls.

and writes ``--out`` (JSON, means over seeds plus per-seed lists) and a PNG plot of poison rate → ASR next to it.
Finished runs are kept under ``--work`` and reused when the script is re-run.

    python benchmarks/carlini_small.py --out runs/carlini_small.json --seeds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from clpoison.attacks import ATTACKS, Attack, AttackParams, PoisonResult
from clpoison.attacks.carlini_backdoor import CarliniBackdoor
from clpoison.attacks.carlini_targeted import CarliniTargeted
from clpoison.experiments.config import build_config, load_preset
from clpoison.experiments.runner import run_or_reuse
from clpoison.utils.io import atomic_write_json


@dataclass
class ControlParams(AttackParams):
    backdoor: dict = field(default_factory=dict)
    targeted: dict = field(default_factory=dict)


class CarliniControl(Attack):
    """Clean training data; evaluates the backdoor trigger and the targeted victims of the given params on it."""

    name = "carlini-control"
    data_kind = "captions"
    Params = ControlParams

    def __init__(self, params: ControlParams) -> None:
        super().__init__(params)
        self.b = CarliniBackdoor(CarliniBackdoor.Params.from_dict({**params.backdoor, "poison_rate": None, "poison_count": 0}))
        self.t = CarliniTargeted(CarliniTargeted.Params.from_dict({**params.targeted, "pairs_per_target": 0}))

    def poison(self, splits: Any, seed: int) -> PoisonResult:
        self.b.poison(splits, seed)
        res = self.t.poison(splits, seed)  # 0 pairs: the clean data, same victims as the poisoned run
        return PoisonResult(res.splits, None)

    def evaluate(self, context: dict) -> dict:
        return {**self.b.evaluate(context), **self.t.evaluate(context)}


if "carlini-control" not in ATTACKS:
    ATTACKS.add("carlini-control", CarliniControl)


def clean_control() -> dict:
    """Config of the clean-data control run (``clean_s{seed}``): plain clip-small on unpoisoned pairs, evaluated
    with the small presets' backdoor trigger and targeted victims. ``safeclip_small.py`` shares it."""
    return {"preset": "clip-small", "attack": {"name": "carlini-control", "params": {
        "backdoor": load_preset("carlini-backdoor-small")["attack"]["params"],
        "targeted": load_preset("carlini-targeted-small")["attack"]["params"]}}}


def run(name: str, data: dict, overrides: list[str], work: Path) -> dict:
    cfg = build_config({**data, "name": name}, ["train.progress=false", *overrides])
    t0 = time.time()
    res, reused = run_or_reuse(cfg, work / name)
    if reused:
        return res["metrics"]
    print(f"{name}: {time.time() - t0:.0f}s " + json.dumps({k: v for k, v in res["metrics"].items()
                                                            if isinstance(v, float)}, sort_keys=True), flush=True)
    return res["metrics"]


def mean(xs: list) -> float:
    xs = [x for x in xs if x is not None]
    return statistics.fmean(xs) if xs else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSON result file (the plot goes next to it as .png)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--rates", default="0.005,0.01,0.02")
    ap.add_argument("--work", default=None, help="run folders (default: OUT without suffix + '_runs')")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-targeted", action="store_true", help="skip the targeted-poisoning runs (quick look)")
    ap.add_argument("overrides", nargs="*", help="config overrides for every run, e.g. train.epochs=10")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    work = Path(args.work) if args.work else out.with_name(out.stem + "_runs")
    rates = [float(r) for r in args.rates.split(",")]
    bd_params = load_preset("carlini-backdoor-small")["attack"]["params"]
    tg_params = load_preset("carlini-targeted-small")["attack"]["params"]
    seeds = list(range(args.seeds))
    t0 = time.time()
    per: dict[str, Any] = {"asr": {str(r): [] for r in rates}, "zs": {str(r): [] for r in rates},
                           "z": {str(r): [] for r in rates}, "clean_asr": [], "clean_zs": [], "clean_z": [],
                           "tg": [], "tg_k": [], "tg_zs": [], "clean_tg": [], "clean_tg_k": []}
    for s in seeds:
        ov = [f"seed={s}", *args.overrides]
        m = run(f"clean_s{s}", clean_control(), ov, work)
        per["clean_asr"].append(m["asr"])
        per["clean_zs"].append(m["zeroshot_top1"])
        per["clean_z"].append(m["backdoor_zscore"])
        per["clean_tg"].append(m["targeted_success_rate"])
        per["clean_tg_k"].append(m["targeted_successes"])
        for r in rates:
            m = run(f"backdoor_{r}_s{s}", {"preset": "carlini-backdoor-small"}, [f"attack.params.poison_rate={r}", *ov], work)
            per["asr"][str(r)].append(m["asr"])
            per["zs"][str(r)].append(m["zeroshot_top1"])
            per["z"][str(r)].append(m["backdoor_zscore"])
        if not args.no_targeted:
            m = run(f"targeted_s{s}", {"preset": "carlini-targeted-small"}, ov, work)
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    b = result["backdoor"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    xs = [0.0] + [100 * r for r in rates]
    ax.plot(xs, [b["asr_clean_model"]] + [b["asr_by_rate"][str(r)] for r in rates], "o-", label="mean over seeds")
    for i in range(len(result["seeds"])):
        ax.scatter(xs, [b["asr_clean_model_per_seed"][i]] + [b["asr_by_rate_per_seed"][str(r)][i] for r in rates],
                   color="grey", s=12, alpha=0.7, label="per seed" if i == 0 else None)
    ax.set_xlabel("poisoned pairs (% of training data)")
    ax.set_ylabel(f"zero-shot ASR (target '{b['target']}')")
    ax.set_ylim(0, 1)
    ax.set_title("Carlini & Terzis backdoor, CLIP small preset")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
