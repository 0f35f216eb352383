"""CTRL small benchmark: the poisoned and the clean victim of ``ctrl-small``, with ASR, kNN ASR and Δcos as a trace
against epochs and the mismatched-frequency control.

``ctrl-small`` (issue 27's recorded setting): ResNet-10 w16 SimCLR τ 0.2 on the bundled CIFAR-10 subset, 250 epochs,
the official CTRL trigger (kornia YUV in float, magnitude 100 on (15, 15) and (31, 31) of U and V, rounded once; the
same magnitude at test time) on the first 5 % of the training set (272 airplanes), every 25 epochs the linear-probe
ASR, the kNN ASR over the clean training bank (k 200, t 0.1; ``asr_knn_all`` is the official "backdoor accuracy":
every test image triggered), Δcos, the no-trigger rates, and the same three at the mismatched frequencies
((15, 31), (31, 15): equal energy). Per seed s two runs:

* ``ctrl_s{s}`` — the poisoned victim;
* ``clean_s{s}`` — the same config with zero poisons (clean data; the same trigger and controls evaluated on the
  clean encoder every 25 epochs), so every point of the trace has its clean twin.

JSON: ``runs.{poisoned,clean}`` → per seed the final metrics and the trace (``{"epochs", METRIC: [...]}``, the
periodic evaluations plus the last epoch); ``final`` → mean ± std over seeds of each final metric for both runs and of
poisoned − clean; ``trigger``; ``_meta`` (poison count from the manifest, threads, overrides, wall time). Finished
runs under ``--work`` are reused (the same config only), an interrupted run resumes from its checkpoint, and the
JSON is rewritten after every run. Extra ``attack.params.*`` overrides change the attack (both runs), the rest both
victims.

    python benchmarks/ctrl_small.py --out benchmarks/results/ctrl_small.json --work runs/ctrl_small
    python benchmarks/ctrl_small.py --out /tmp/c.json train.epochs=2 eval.every_epochs=1 data.train_limit=300 \\
        data.test_limit=100 model.width=4 eval.knn_k=20  # smoke
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from clpoison.attacks import ATTACKS
from clpoison.errors import ConfigError
from clpoison.experiments.config import load_preset
from clpoison.report.tables import history_curve
from clpoison.utils.io import atomic_write_json

from _harness import run_named, script_main, split_overrides, stats, work_dir

PRESET = "ctrl-small"
#: Traced every ``eval.every_epochs`` and reported at the end (``asr`` first: it marks the evaluated epochs).
METRICS = ("asr", "asr_knn", "asr_knn_all", "delta_cos", "asr_mismatched", "asr_knn_mismatched",
           "asr_knn_all_mismatched", "delta_cos_mismatched", "asr_no_trigger", "asr_knn_no_trigger",
           "asr_knn_all_no_trigger", "ca", "knn_top1", "backdoor_zscore")


def run_config(params: dict, poisoned: bool) -> dict:
    """``ctrl-small`` with ``params``; the clean twin has zero poisons (the same trigger evaluated)."""
    p = params if poisoned else {**params, "poison_rate": None, "poison_count": 0}
    return {"preset": PRESET, "attack": {"name": "ctrl", "params": p}}


def record(res: dict, run: Path) -> dict:
    man = json.loads((run / "manifest.json").read_text())
    return {"final": {k: res["metrics"].get(k) for k in METRICS}, "trace": history_curve(res, *METRICS),
            "poison_count": man["details"]["poison_count"], "target": man["targets"]["target"]}


def final_stats(recs: list[dict]) -> dict:
    return {k: stats([r["final"][k] for r in recs]) for k in METRICS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSON result file")
    ap.add_argument("--seeds", type=int, default=1, help="seeds (a poisoned and a clean run each)")
    ap.add_argument("--work", default=None, help="run folders (default: OUT without suffix + '_runs')")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (recorded in _meta)")
    ap.add_argument("overrides", nargs="*", help="attack.params.* for the attack; the rest for both victims")
    args = ap.parse_args()
    if args.seeds < 1 or args.threads < 1:
        raise ConfigError("--seeds and --threads must be >= 1")
    torch.set_num_threads(args.threads)
    out, work = Path(args.out), work_dir(args.out, args.work)
    params, victim_ov = split_overrides(args.overrides, load_preset(PRESET)["attack"]["params"])
    atk = ATTACKS.build("ctrl", params)  # validates the overrides before any training
    t0 = time.time()
    runs: dict[str, list[dict]] = {"poisoned": [], "clean": []}
    result: dict[str, Any] = {}

    def write() -> None:
        final: dict[str, Any] = {k: final_stats(v) for k, v in runs.items() if v}
        pairs = list(zip(runs["poisoned"], runs["clean"]))
        if pairs:
            final["poisoned_minus_clean"] = {k: stats([None if p["final"][k] is None or c["final"][k] is None
                                                       else p["final"][k] - c["final"][k] for p, c in pairs])
                                             for k in METRICS}
        result.update({"runs": runs, "final": final, "trigger": atk.trigger.spec.to_dict(), "_meta": {
            "preset": PRESET, "seeds": list(range(args.seeds)), "overrides": args.overrides, "attack_params": params,
            "poison_count": runs["poisoned"][0]["poison_count"] if runs["poisoned"] else None,
            "threads": args.threads, "work": str(work), "wall_s": round(time.time() - t0, 1)}})
        atomic_write_json(out, result)

    for s in range(args.seeds):
        for kind, name in (("poisoned", f"ctrl_s{s}"), ("clean", f"clean_s{s}")):
            res, _ = run_named(name, run_config(params, kind == "poisoned"), [f"seed={s}", *victim_ov], work)
            rec = record(res, work / name)
            runs[kind].append(rec)
            write()
            tr = rec["trace"]
            print(f"seed {s} {kind}: " + "; ".join(f"{k} " + " ".join("-" if v is None else f"{v:.3f}" for v in tr[k])
                                                   for k in ("asr", "asr_knn_all", "delta_cos", "asr_mismatched"))
                  + f" at epochs {tr['epochs']}", flush=True)
    print(json.dumps({k: {m: v[m]["mean"] for m in ("asr", "asr_knn", "asr_knn_all", "delta_cos")}
                      for k, v in result["final"].items()}, indent=2))


if __name__ == "__main__":
    script_main(main)
