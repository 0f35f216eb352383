"""SafeCLIP's safe-fraction cap taken from the data (``defense.params.cap_from_gmm``) on the small preset.

The ``safeclip-small`` preset caps the safe fraction at a fixed 0.70, tuned on the bundled generated captions (a
fifth of them name no class). ``cap_from_gmm: true`` caps it instead at the weight of the clean GMM component of each
split (the GMM's own estimate of the aligned share), under the paper's 0.85. For every seed this trains SafeCLIP
with that cap against the 1 % backdoor (``carlini-backdoor-small``) and targeted poisoning
(``carlini-targeted-small``) — the same runs as ``benchmarks/safeclip_small.py``'s SafeCLIP runs, the cap aside —
and writes ``{"backdoor": {"asr", "zeroshot", "poison_recall_risky"}, "targeted": {"successes", "zeroshot"},
"gmm": {"clean_weight_first_split", "separation_first_split", "safe_fraction_last"}}`` (means, and ``per_seed``).
Compare with ``benchmarks/results/safeclip_small.json`` (the fixed cap, same seeds):

    python benchmarks/safeclip_gmm_cap.py --out benchmarks/results/safeclip_gmm_cap.json --seeds 3
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial
from pathlib import Path

import torch

from clpoison.experiments.config import load_preset
from clpoison.utils.io import atomic_write_json

from _harness import mean, run_named, work_dir

ECHO = partial(print, flush=True)
CAP = ["defense.params.cap_from_gmm=true", "defense.params.cap_filter_ratio=0.85"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--work", default=None, help="run folders (default: OUT without suffix + '_runs')")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out, t0 = Path(args.out), time.time()
    work = work_dir(out, args.work)
    sections = {k: v for k, v in load_preset("safeclip-small").items() if k not in ("name", "preset")}
    per: dict[str, list] = {k: [] for k in ("asr", "zeroshot_backdoor", "poison_recall_risky", "successes",
                                            "zeroshot_targeted", "clean_weight_first_split",
                                            "separation_first_split", "safe_fraction_last", "time")}
    for s in range(args.seeds):
        for attack, preset, extra in (("backdoor", "carlini-backdoor-small", ["attack.params.poison_rate=0.01"]),
                                      ("targeted", "carlini-targeted-small", [])):
            res, _ = run_named(f"{attack}_safeclip_s{s}", {"preset": preset, **sections}, [*extra, f"seed={s}", *CAP],
                               work, ECHO)
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
    result = {
        "backdoor": {"asr": mean(per["asr"]), "zeroshot": mean(per["zeroshot_backdoor"]),
                     "poison_recall_risky": mean(per["poison_recall_risky"])},
        "targeted": {"successes": mean(per["successes"]), "zeroshot": mean(per["zeroshot_targeted"])},
        "gmm": {k: mean(per[k]) for k in ("clean_weight_first_split", "separation_first_split", "safe_fraction_last")},
        "per_seed": per, "seeds": args.seeds, "overrides": CAP, "wall_s": round(time.time() - t0, 1),
    }
    atomic_write_json(out, result)
    print(json.dumps({k: result[k] for k in ("backdoor", "targeted", "gmm")}, indent=2))


if __name__ == "__main__":
    main()
