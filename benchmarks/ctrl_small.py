"""CTRL small benchmark: the poisoned and the clean victim of ``ctrl-small``, with ASR, kNN ASR and Δcos as a trace
against epochs and the mismatched-frequency control.

``ctrl-small`` (issue 27's recorded setting): ResNet-10 w16 SimCLR τ 0.2 on the bundled CIFAR-10 subset, 250 epochs,
the official CTRL trigger (kornia YUV in float, magnitude 100 on (15, 15) and (31, 31) of U and V, rounded once; the
same magnitude at test time) on the first 5 % of the training set (272 airplanes), every 25 epochs the linear-probe
ASR, the kNN ASR over the clean training bank (k 200, t 0.1; ``asr_knn_all`` is the official "backdoor accuracy":
every test image triggered), Δcos, the no-trigger rates, and the same three at the mismatched frequencies
((15, 31), (31, 15): equal energy). The comparison is the grid ``benchmarks/grids/ctrl_small.yaml`` plus
:func:`summarise`; per seed s two cells:

* ``ctrl_s{s}`` — the poisoned victim;
* ``clean_s{s}`` — the same config with zero poisons (clean data; the same trigger and controls evaluated on the
  clean encoder every 25 epochs), so every point of the trace has its clean twin.

JSON: ``runs.{poisoned,clean}`` → per seed the final metrics and the trace (``{"epochs", METRIC: [...]}``, the
periodic evaluations plus the last epoch); ``final`` → mean ± std over seeds of each final metric for both runs and of
poisoned − clean; ``trigger``; ``_meta`` (poison count from the manifest, threads, overrides, wall time). The runs are
kept in ``--work`` (``WORK/cells/NAME``) and reused (the same config only); an interrupted run resumes from its
checkpoint. ``clpoison grid benchmarks/grids/ctrl_small.yaml --out WORK`` makes the same runs, which
``--work WORK --summarise-only`` summarises. Extra ``attack.params.*`` overrides change the attack (both runs; the
clean twin keeps its zero poisons), the rest both victims.

    python benchmarks/ctrl_small.py --out benchmarks/results/ctrl_small.json --work runs/ctrl_small --threads 2
    python benchmarks/ctrl_small.py --out /tmp/c.json train.epochs=2 eval.every_epochs=1 data.train_limit=300 \\
        data.test_limit=100 model.width=4 eval.knn_k=20  # smoke
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

from clpoison.attacks import ATTACKS
from clpoison.errors import ConfigError
from clpoison.experiments.config import load_preset
from clpoison.experiments.grid import CELLS_DIR, read_grid
from clpoison.report.tables import history_curve

from _harness import (GRIDS, comparison_parser, route_params, run_comparison, script_main, seed_axis,
                      split_overrides, start, stats, write_result)

GRID = GRIDS / "ctrl_small.yaml"
PRESET = "ctrl-small"
#: Traced every ``eval.every_epochs`` and reported at the end (``asr`` first: it marks the evaluated epochs).
METRICS = ("asr", "asr_knn", "asr_knn_all", "delta_cos", "asr_mismatched", "asr_knn_mismatched",
           "asr_knn_all_mismatched", "delta_cos_mismatched", "asr_no_trigger", "asr_knn_no_trigger",
           "asr_knn_all_no_trigger", "ca", "knn_top1", "backdoor_zscore")
KINDS = (("poisoned", "ctrl_s{}"), ("clean", "clean_s{}"))


def grid_spec(seeds: int, overrides: Sequence[str] = ()) -> tuple[dict, list[str]]:
    """``(grid spec, the other overrides)``: the grid file over ``seeds``, each ``attack.params.*`` override given to
    both cells except a key the clean twin sets itself (its zero poisons)."""
    spec, rest = route_params(read_grid(GRID), list(overrides))
    return seed_axis(spec, seeds), rest


def record(res: dict, man: dict) -> dict:
    """One run's final metrics, trace, poison count and target (from its manifest)."""
    return {"final": {k: res["metrics"].get(k) for k in METRICS}, "trace": history_curve(res, *METRICS),
            "poison_count": man["details"]["poison_count"], "target": man["targets"]["target"]}


def summarise(runs: dict[str, dict], manifests: dict[str, dict], seeds: int) -> dict:
    """``{"runs", "final"}`` from ``{cell name: results.json}`` and ``{cell name: manifest.json}``; prints each run's
    trace."""
    recs: dict[str, list[dict]] = {"poisoned": [], "clean": []}
    for s in range(seeds):
        for kind, name in KINDS:
            rec = record(runs[name.format(s)], manifests[name.format(s)])
            recs[kind].append(rec)
            tr = rec["trace"]
            print(f"seed {s} {kind}: " + "; ".join(f"{k} " + " ".join("-" if v is None else f"{v:.3f}" for v in tr[k])
                                                   for k in ("asr", "asr_knn_all", "delta_cos", "asr_mismatched"))
                  + f" at epochs {tr['epochs']}", flush=True)
    final: dict[str, Any] = {k: {m: stats([r["final"][m] for r in v]) for m in METRICS} for k, v in recs.items()}
    pairs = list(zip(recs["poisoned"], recs["clean"]))
    final["poisoned_minus_clean"] = {k: stats([None if p["final"][k] is None or c["final"][k] is None
                                               else p["final"][k] - c["final"][k] for p, c in pairs]) for k in METRICS}
    return {"runs": recs, "final": final}


def main() -> None:
    ap = comparison_parser(__doc__, seeds=1)
    ap.set_defaults(threads=1)
    args = ap.parse_args()
    if args.seeds < 1 or args.threads < 1:
        raise ConfigError("--seeds and --threads must be >= 1")
    out, work = start(args)
    params, _ = split_overrides(args.overrides, load_preset(PRESET)["attack"]["params"])
    atk = ATTACKS.build("ctrl", params)  # validates the overrides before any training
    spec, rest = grid_spec(args.seeds, args.overrides)
    t0 = time.time()
    runs = run_comparison(spec, work, rest, args.summarise_only)
    manifests = {n: json.loads((Path(work) / CELLS_DIR / n / "manifest.json").read_text()) for n in runs}
    result = summarise(runs, manifests, args.seeds)
    result.update({"trigger": atk.trigger.spec.to_dict(), "_meta": {
        "preset": PRESET, "seeds": list(range(args.seeds)), "overrides": args.overrides, "attack_params": params,
        "poison_count": result["runs"]["poisoned"][0]["poison_count"], "threads": args.threads, "work": str(work),
        "wall_s": round(time.time() - t0, 1)}})
    write_result(out, result, {k: {m: v[m]["mean"] for m in ("asr", "asr_knn", "asr_knn_all", "delta_cos")}
                               for k, v in result["final"].items()})


if __name__ == "__main__":
    script_main(main)
