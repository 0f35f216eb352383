"""SafeCLIP against the Carlini & Terzis attacks on the CLIP small preset: plain CLIP vs SafeCLIP.

For every seed it trains, on the bundled data, plain CLIP and SafeCLIP (preset ``safeclip-small``) on the 1%
backdoor (``carlini-backdoor-small``) and on targeted poisoning (``carlini-targeted-small``, 16 targets), and
writes

``{"backdoor": {"asr_clip", "asr_safeclip", "zeroshot_clip", "zeroshot_safeclip", "poison_recall_risky"},
"targeted": {"success_clip", "success_safeclip"}, "time_ratio_safeclip_over_clip"}``

(means over seeds, plus ``*_per_seed`` lists). ``poison_recall_risky`` is the share of the poisoned pairs that the
last epoch's split put in the risky set. The SafeCLIP runs take every section of the ``safeclip-small`` preset
(its ``defense`` and its ``train.epochs``, which is shorter than plain CLIP's); since a shorter run could by itself
weaken an attack, a control trains plain CLIP for the same number of epochs as SafeCLIP on the same poisoned
data (``backdoor.asr_clip_same_epochs``, ``targeted.success_clip_same_epochs``), and a clean-data plain CLIP
(the ``clean_s{seed}`` run of ``carlini_small.py``, config :func:`clpoison.experiments.bench.carlini_clean_control`)
gives each seed's ASR floor: the share of triggered non-airplane images that an *unpoisoned* model already calls
airplane (``backdoor.asr_clean_model``, and ``targeted.successes_clean_model``). ``--no-control`` skips both
controls. Finished runs are kept under ``--work`` and reused; the plain-CLIP runs have the same names and configs
as those of ``benchmarks/carlini_small.py`` (``backdoor_0.01_s0``, ``targeted_s0``, ``clean_s0``), so pointing
both scripts at one ``--work`` folder trains each plain model once:

    python benchmarks/carlini_small.py --out benchmarks/results/carlini_small.json --work runs/carlini_small_runs
    python benchmarks/safeclip_small.py --out benchmarks/results/safeclip_small.json --work runs/carlini_small_runs
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial
from pathlib import Path

import torch

from clpoison.experiments.bench import carlini_clean_control, mean, run_named, work_dir
from clpoison.experiments.config import load_preset
from clpoison.utils.io import atomic_write_json

ECHO = partial(print, flush=True)  # a fresh run's line shows at once in a log file


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--rate", type=float, default=0.01, help="backdoor poison rate")
    ap.add_argument("--work", default=None, help="run folders (default: OUT without suffix + '_runs')")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-control", action="store_true", help="skip the two controls (plain CLIP at SafeCLIP's "
                    "epoch count, and on clean data)")
    ap.add_argument("--safeclip", nargs="*", default=[], help="overrides for the SafeCLIP runs only (defense.params.*)")
    ap.add_argument("overrides", nargs="*", help="config overrides for every run, e.g. train.epochs=10")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    work = work_dir(out, args.work)
    # every section of the SafeCLIP preset except its own name and base preset (defense, train.epochs)
    sections = {k: v for k, v in load_preset("safeclip-small").items() if k not in ("name", "preset")}
    epochs = sections.get("train", {}).get("epochs")
    control = not args.no_control and epochs is not None
    per: dict[str, list] = {k: [] for k in ("asr_clip", "asr_safeclip", "zeroshot_clip", "zeroshot_safeclip",
                                            "poison_recall_risky", "success_clip", "success_safeclip",
                                            "successes_clip", "successes_safeclip", "time_clip", "time_safeclip",
                                            "asr_clip_same_epochs", "zeroshot_clip_same_epochs",
                                            "success_clip_same_epochs", "successes_clip_same_epochs",
                                            "asr_clean_model", "successes_clean_model")}
    t0 = time.time()
    for s in range(args.seeds):
        ov = [f"seed={s}", *args.overrides]
        if not args.no_control:  # same name and config as carlini_small.py's clean run, so one --work shares it
            clean, _ = run_named(f"clean_s{s}", carlini_clean_control(), ov, work, ECHO)
            per["asr_clean_model"].append(clean["metrics"]["asr"])
            per["successes_clean_model"].append(clean["metrics"]["targeted_successes"])
        for attack, preset, extra, tag in (
                ("backdoor", "carlini-backdoor-small", [f"attack.params.poison_rate={args.rate}"], f"_{args.rate}"),
                ("targeted", "carlini-targeted-small", [], "")):
            plain, _ = run_named(f"{attack}{tag}_s{s}", {"preset": preset}, [*extra, *ov], work, ECHO)
            safe, _ = run_named(f"{attack}_safeclip{tag}_s{s}", {"preset": preset, **sections},
                                [*extra, *ov, *args.safeclip], work, ECHO)
            n_ep = safe["config"]["train"]["epochs"]  # after overrides: the control trains as long as SafeCLIP did
            short = run_named(f"{attack}{tag}_e{n_ep}_s{s}", {"preset": preset},
                              [*extra, *ov, f"train.epochs={n_ep}"], work, ECHO)[0] if control else None
            per["time_clip"].append(plain["timings"]["pretrain_s"])
            per["time_safeclip"].append(safe["timings"]["pretrain_s"])
            if attack == "backdoor":
                per["asr_clip"].append(plain["metrics"]["asr"])
                per["asr_safeclip"].append(safe["metrics"]["asr"])
                per["zeroshot_clip"].append(plain["metrics"]["zeroshot_top1"])
                per["zeroshot_safeclip"].append(safe["metrics"]["zeroshot_top1"])
                if short is not None:
                    per["asr_clip_same_epochs"].append(short["metrics"]["asr"])
                    per["zeroshot_clip_same_epochs"].append(short["metrics"]["zeroshot_top1"])
                last = [h for h in safe["history"] if "safeclip_poison_recall_risky" in h]
                per["poison_recall_risky"].append(last[-1]["safeclip_poison_recall_risky"] if last else None)
            else:
                for kind, res in (("clip", plain), ("safeclip", safe)):
                    per[f"success_{kind}"].append(res["metrics"]["targeted_success_rate"])
                    per[f"successes_{kind}"].append(res["metrics"]["targeted_successes"])
                if short is not None:
                    per["success_clip_same_epochs"].append(short["metrics"]["targeted_success_rate"])
                    per["successes_clip_same_epochs"].append(short["metrics"]["targeted_successes"])
    result = {
        "backdoor": {k: mean(per[k]) for k in ("asr_clip", "asr_safeclip", "zeroshot_clip", "zeroshot_safeclip",
                                               "poison_recall_risky", "asr_clip_same_epochs",
                                               "zeroshot_clip_same_epochs", "asr_clean_model")},
        "targeted": {k: mean(per[k]) for k in ("success_clip", "success_safeclip", "success_clip_same_epochs",
                                               "successes_clean_model")},
        "safeclip_epochs": n_ep if args.seeds else epochs,
        "time_ratio_safeclip_over_clip": sum(per["time_safeclip"]) / max(1e-9, sum(per["time_clip"])),
        "per_seed": per, "rate": args.rate, "seeds": args.seeds, "overrides": args.overrides,
        "safeclip_overrides": args.safeclip, "wall_s": round(time.time() - t0, 1),
    }
    atomic_write_json(out, result)
    print(json.dumps({k: result[k] for k in ("backdoor", "targeted", "time_ratio_safeclip_over_clip")}, indent=2))


if __name__ == "__main__":
    main()
