"""CTRL small benchmark: the frequency trigger's ASR against the clean model's, across magnitudes and poison ratios,
and ASR against epochs (``eval.every_epochs``).

On seed 0 it sweeps the magnitude at ``--ratio`` and the poison ratio at ``--magnitude`` (``ctrl-small``, victim
``simclr-small``, target airplane); every run records ASR over training. The best setting (largest ASR minus the
clean model's) is then run on ``--seeds`` seeds. The clean model's ASR with the same trigger comes from the clean
victim ``clean_s{seed}`` (shared with ``nlb_small.py`` when ``--work`` is the same folder).

    python benchmarks/ctrl_small.py --out benchmarks/results/ctrl_small.json --seeds 3 --work benchmarks/results/nlb_small_runs
    python benchmarks/ctrl_small.py --out /tmp/c.json --seeds 1 --magnitudes 100 --ratios 0.01 train.epochs=2  # smoke

JSON: ``{"sweep": {NAME: {"magnitude", "ratio", "asr", "ca", "clean_asr", "asr_by_epoch"}}, "best": {"name",
"asr", "ca", "clean_asr", "per_seed", "std"}, "_meta"}``.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch

from clpoison.attacks import ATTACKS
from clpoison.experiments.bench import script_main, clean_asr_by_target, run_named, split_overrides, stats, work_dir
from clpoison.experiments.config import load_preset
from clpoison.utils.io import atomic_write_json


def setting(params: dict, magnitude: float, ratio: float) -> tuple[str, dict]:
    p = json.loads(json.dumps(params))
    p["trigger"] = {**p["trigger"], "magnitude": magnitude}
    p["poison_rate"] = ratio
    return f"ctrl_m{magnitude:g}_r{ratio:g}", p


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--magnitudes", default="50,100,200")
    ap.add_argument("--ratios", default="0.01,0.05,0.09")
    ap.add_argument("--magnitude", type=float, default=100.0, help="the magnitude of the ratio sweep")
    ap.add_argument("--ratio", type=float, default=0.05, help="the ratio of the magnitude sweep")
    ap.add_argument("--every", type=int, default=5, help="eval.every_epochs of the sweep runs")
    ap.add_argument("--work", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("overrides", nargs="*", help="attack.params.* for the attack; the rest for every victim")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = work_dir(args.out, args.work)
    base, victim_ov = split_overrides(args.overrides, load_preset("ctrl-small")["attack"]["params"])
    grid = [(float(m), args.ratio) for m in args.magnitudes.split(",") if m]
    grid += [(args.magnitude, float(r)) for r in args.ratios.split(",") if r and (args.magnitude, float(r)) not in grid]
    t0 = time.time()

    def clean(seed: int, params: dict) -> tuple[float, float]:
        run_named(f"clean_s{seed}", {"preset": "simclr-small"}, [f"seed={seed}", *victim_ov], work)
        atk = ATTACKS.build("ctrl", params)
        by_class, ca = clean_asr_by_target(work / f"clean_s{seed}", atk.trigger, atk.params.eval_seed)
        names = json.loads((work / f"clean_s{seed}" / "results.json").read_text())["data"]["classes"]
        return by_class[names.index(params["target"])], ca

    sweep: dict[str, Any] = {}
    for mag, ratio in grid:
        name, p = setting(base, mag, ratio)
        res, _ = run_named(f"{name}_s0", {"preset": "ctrl-small", "attack": {"name": "ctrl", "params": p},
                                          "eval": {"every_epochs": args.every}}, ["seed=0", *victim_ov], work)
        m = res["metrics"]
        casr, _ = clean(0, p)
        trace = [(h["epoch"], h["eval_asr"]) for h in res["history"] if "eval_asr" in h] + [(res["config"]["train"]["epochs"], m["asr"])]
        sweep[name] = {"magnitude": mag, "ratio": ratio, "asr": m["asr"], "ca": m["ca"], "clean_asr": casr,
                       "asr_by_epoch": trace}
        print(f"{name}: ASR {m['asr']:.4f} (clean model {casr:.4f}), CA {m['ca']:.4f}", flush=True)
    best = max(sweep, key=lambda k: sweep[k]["asr"] - sweep[k]["clean_asr"])
    mag, ratio = sweep[best]["magnitude"], sweep[best]["ratio"]
    _, p = setting(base, mag, ratio)
    per: dict[str, list] = {"asr": [], "ca": [], "clean_asr": []}
    for s in range(args.seeds):
        res, _ = run_named(f"{best}_s{s}", {"preset": "ctrl-small", "attack": {"name": "ctrl", "params": p},
                                            "eval": {"every_epochs": args.every}}, [f"seed={s}", *victim_ov], work)
        per["asr"].append(res["metrics"]["asr"])
        per["ca"].append(res["metrics"]["ca"])
        per["clean_asr"].append(clean(s, p)[0])
    result = {"sweep": sweep,
              "best": {"name": best, "magnitude": mag, "ratio": ratio, **{k: stats(v)["mean"] for k, v in per.items()},
                       "per_seed": per, "std": {k: stats(v)["std"] for k, v in per.items()}},
              "_meta": {"seeds": list(range(args.seeds)), "overrides": args.overrides, "target": base["target"],
                        "wall_s": round(time.time() - t0, 1), "threads": args.threads}}
    atomic_write_json(args.out, result)
    print(json.dumps(result["best"], indent=2))


if __name__ == "__main__":
    script_main(main)
