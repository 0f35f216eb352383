"""SafeCLIP's safe-fraction cap taken from the data (``defense.params.cap_from_gmm``) on the small preset.

The ``safeclip-small`` preset caps the safe fraction at a fixed 0.70, tuned on the bundled generated captions (a
fifth of them name no class). ``cap_from_gmm: true`` caps it instead at the weight of the clean GMM component of each
split (the GMM's own estimate of the aligned share), under the paper's 0.85. For every seed this trains SafeCLIP
with that cap against the 1 % backdoor (``carlini-backdoor-small``) and targeted poisoning
(``carlini-targeted-small``) — the same runs as ``benchmarks/safeclip_small.py``'s SafeCLIP runs, the cap aside —
and writes ``{"backdoor": {"asr", "zeroshot", "poison_recall_risky"}, "targeted": {"successes", "zeroshot"},
"gmm": {"clean_weight_first_split", "separation_first_split", "safe_fraction_last"}}`` (means, and ``per_seed``).
The runs are the SafeCLIP cells of ``benchmarks/grids/safeclip_small.yaml`` (``safeclip_small.grid_spec``) with the
cap's two overrides, named ``backdoor_safeclip_s{seed}`` / ``targeted_safeclip_s{seed}`` in ``WORK/cells``;
:func:`summarise` writes the JSON. Compare with ``benchmarks/results/safeclip_small.json`` (the fixed cap, same
seeds):

    python benchmarks/safeclip_gmm_cap.py --out benchmarks/results/safeclip_gmm_cap.json --seeds 3
"""

from __future__ import annotations

import time

from _harness import comparison_parser, mean, run_comparison, script_main, start, write_result
from safeclip_small import grid_spec as safeclip_grid

CAP = ["defense.params.cap_from_gmm=true", "defense.params.cap_filter_ratio=0.85"]


def grid_spec(seeds: int) -> dict:
    """The SafeCLIP cells of ``safeclip_small.yaml`` (1 % backdoor, targeted) over ``seeds`` with :data:`CAP`."""
    spec, _ = safeclip_grid(seeds, control=False, safeclip=tuple(CAP))
    spec["cells"] = [{**c, "name": c["name"].replace("_safeclip_0.01_", "_safeclip_")}
                     for c in spec["cells"] if "_safeclip" in c["name"]]
    return spec


def summarise(runs: dict[str, dict], seeds: int) -> dict:
    """The JSON's ``backdoor``, ``targeted``, ``gmm`` and ``per_seed`` from ``{cell name: results.json}``."""
    per: dict[str, list] = {k: [] for k in ("asr", "zeroshot_backdoor", "poison_recall_risky", "successes",
                                            "zeroshot_targeted", "clean_weight_first_split",
                                            "separation_first_split", "safe_fraction_last", "time")}
    for s in range(seeds):
        for attack in ("backdoor", "targeted"):
            res = runs[f"{attack}_safeclip_s{s}"]
            m = res["metrics"]
            splits = [h for h in res["history"] if "safeclip_safe_fraction" in h]
            fits = [h for h in splits if h.get("safeclip_gmm_clean_weight") is not None]
            if attack == "backdoor":
                per["asr"].append(m["asr"])
                per["zeroshot_backdoor"].append(m["zeroshot_top1"])
                per["poison_recall_risky"].append(splits[-1].get("safeclip_poison_recall_risky"))
            else:
                per["successes"].append(m["targeted_successes"])
                per["zeroshot_targeted"].append(m["zeroshot_top1"])
            per["clean_weight_first_split"].append(fits[0]["safeclip_gmm_clean_weight"])
            per["separation_first_split"].append(fits[0]["safeclip_gmm_separation"])
            per["safe_fraction_last"].append(splits[-1]["safeclip_safe_fraction"])
            per["time"].append(res["timings"]["pretrain_s"])
    return {
        "backdoor": {"asr": mean(per["asr"]), "zeroshot": mean(per["zeroshot_backdoor"]),
                     "poison_recall_risky": mean(per["poison_recall_risky"])},
        "targeted": {"successes": mean(per["successes"]), "zeroshot": mean(per["zeroshot_targeted"])},
        "gmm": {k: mean(per[k]) for k in ("clean_weight_first_split", "separation_first_split", "safe_fraction_last")},
        "per_seed": per,
    }


def main() -> None:
    args = comparison_parser(__doc__, seeds=3).parse_args()
    out, work = start(args)
    t0 = time.time()
    runs = run_comparison(grid_spec(args.seeds), work, args.overrides, args.summarise_only)
    result = {**summarise(runs, args.seeds), "seeds": args.seeds, "overrides": [*CAP, *args.overrides],
              "wall_s": round(time.time() - t0, 1)}
    write_result(out, result, {k: result[k] for k in ("backdoor", "targeted", "gmm")})


if __name__ == "__main__":
    script_main(main)
