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

``--captions`` trains every run on another caption set (a caption CSV/TSV or tar shards such as
``shared/data/webcaps``; zero-shot, ASR and targeted success then come from the labelled ``--eval-set``:
:mod:`clpoison.experiments.clip_bench`), ``--count`` gives the backdoor as a poison count (runs
``backdoor_n{N}_s*``, shared with ``clip_dose.py`` and ``clip_defenses_small.py``); the JSON names the captions
(``"caption_set"``) and also gives ``targeted.poison_recall_risky_targeted`` (the targeted poisons' recall in the
last risky set) and ``targeted.chance_clip`` / ``chance_safeclip`` / ``chance_clean_model`` (the successes each model
would score by chance: ``targeted_expected_by_chance``, docs/webcaps.md). ``--attacks targeted,backdoor`` picks the
attacks and their order. Every SafeCLIP run also writes its poisons' trace (``safeclip/poison_trace.jsonl``,
docs/safeclip.md):

    python benchmarks/safeclip_small.py --captions '../shared/data/webcaps/train-{000000..000003}.tar' \\
        --test-captions ../shared/data/webcaps/test-000000.tar --count 100 --seeds 2 \\
        --out benchmarks/results/safeclip_webcaps.json --work runs/webcaps_clip
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial


from clpoison.experiments.bench import carlini_clean_control, mean, run_named, script_main
from clpoison.experiments.clip_bench import (add_bench_args, backdoor_dose, caption_details, caption_set_name,
                                             start)
from clpoison.errors import ConfigError
from clpoison.experiments.config import load_preset
from clpoison.utils.io import atomic_write_json

ECHO = partial(print, flush=True)  # a fresh run's line shows at once in a log file


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--rate", type=float, default=0.01, help="backdoor poison rate")
    ap.add_argument("--count", type=int, default=None, help="backdoor poison count (instead of --rate)")
    add_bench_args(ap, seeds=3)
    ap.add_argument("--attacks", default="backdoor,targeted",
                    help="which attacks, in this order (comma list of backdoor, targeted); the other's keys are NaN")
    ap.add_argument("--no-control", action="store_true", help="skip the two controls (plain CLIP at SafeCLIP's "
                    "epoch count, and on clean data)")
    ap.add_argument("--safeclip", nargs="*", default=[], help="overrides for the SafeCLIP runs only (defense.params.*)")
    ap.add_argument("overrides", nargs="*", help="config overrides for every run, e.g. train.epochs=10")
    args = ap.parse_args()
    out, work, caps = start(args)
    # every section of the SafeCLIP preset except its own name and base preset (defense, train.epochs)
    sections = {k: v for k, v in load_preset("safeclip-small").items() if k not in ("name", "preset")}
    bd_ov, bd_tag = backdoor_dose(None if args.count is not None else args.rate, args.count)
    rows = {"backdoor": ("carlini-backdoor-small", bd_ov, bd_tag), "targeted": ("carlini-targeted-small", [], "")}
    attacks = args.attacks.split(",")
    unknown = [a for a in attacks if a not in rows]
    if unknown:  # before anything trains
        raise ConfigError(f"--attacks: unknown attack {unknown[0]!r}; use backdoor, targeted or both (comma list)")
    epochs = sections.get("train", {}).get("epochs")
    control = not args.no_control and epochs is not None
    per: dict[str, list] = {k: [] for k in ("asr_clip", "asr_safeclip", "zeroshot_clip", "zeroshot_safeclip",
                                            "poison_recall_risky", "poison_recall_risky_targeted", "success_clip",
                                            "success_safeclip",
                                            "successes_clip", "successes_safeclip", "time_clip", "time_safeclip",
                                            "asr_clip_same_epochs", "zeroshot_clip_same_epochs",
                                            "success_clip_same_epochs", "successes_clip_same_epochs",
                                            "asr_clean_model", "successes_clean_model", "chance_clip",
                                            "chance_safeclip", "chance_clean_model")}
    t0 = time.time()
    for s in range(args.seeds):
        ov = [f"seed={s}", *args.overrides]
        if not args.no_control:  # same name and config as carlini_small.py's clean run, so one --work shares it
            clean, _ = run_named(f"clean_s{s}", {**carlini_clean_control(), **caps}, ov, work, ECHO)
            per["asr_clean_model"].append(clean["metrics"]["asr"])
            per["successes_clean_model"].append(clean["metrics"]["targeted_successes"])
            per["chance_clean_model"].append(clean["metrics"].get("targeted_expected_by_chance"))
        for attack in attacks:
            preset, extra, tag = rows[attack]
            plain, _ = run_named(f"{attack}{tag}_s{s}", {"preset": preset, **caps}, [*extra, *ov], work, ECHO)
            safe, _ = run_named(f"{attack}_safeclip{tag}_s{s}", {"preset": preset, **caps, **sections},
                                [*extra, *ov, *args.safeclip], work, ECHO)
            n_ep = safe["config"]["train"]["epochs"]  # after overrides: the control trains as long as SafeCLIP did
            short = run_named(f"{attack}{tag}_e{n_ep}_s{s}", {"preset": preset, **caps},
                              [*extra, *ov, f"train.epochs={n_ep}"], work, ECHO)[0] if control else None
            per["time_clip"].append(plain["timings"]["pretrain_s"])
            per["time_safeclip"].append(safe["timings"]["pretrain_s"])
            last = [h for h in safe["history"] if "safeclip_poison_recall_risky" in h]
            recall = last[-1]["safeclip_poison_recall_risky"] if last else None
            if attack == "backdoor":
                per["asr_clip"].append(plain["metrics"]["asr"])
                per["asr_safeclip"].append(safe["metrics"]["asr"])
                per["zeroshot_clip"].append(plain["metrics"]["zeroshot_top1"])
                per["zeroshot_safeclip"].append(safe["metrics"]["zeroshot_top1"])
                if short is not None:
                    per["asr_clip_same_epochs"].append(short["metrics"]["asr"])
                    per["zeroshot_clip_same_epochs"].append(short["metrics"]["zeroshot_top1"])
                per["poison_recall_risky"].append(recall)
            else:
                per["poison_recall_risky_targeted"].append(recall)
                for kind, res in (("clip", plain), ("safeclip", safe)):
                    per[f"success_{kind}"].append(res["metrics"]["targeted_success_rate"])
                    per[f"successes_{kind}"].append(res["metrics"]["targeted_successes"])
                    per[f"chance_{kind}"].append(res["metrics"].get("targeted_expected_by_chance"))
                if short is not None:
                    per["success_clip_same_epochs"].append(short["metrics"]["targeted_success_rate"])
                    per["successes_clip_same_epochs"].append(short["metrics"]["targeted_successes"])
    result = {
        "caption_set": caption_set_name(args),
        "backdoor": {k: mean(per[k]) for k in ("asr_clip", "asr_safeclip", "zeroshot_clip", "zeroshot_safeclip",
                                               "poison_recall_risky", "asr_clip_same_epochs",
                                               "zeroshot_clip_same_epochs", "asr_clean_model")},
        "targeted": {k: mean(per[k]) for k in ("success_clip", "success_safeclip", "success_clip_same_epochs",
                                               "successes_clean_model", "poison_recall_risky_targeted",
                                               "chance_clip", "chance_safeclip", "chance_clean_model")},
        "safeclip_epochs": n_ep if args.seeds else epochs,
        "time_ratio_safeclip_over_clip": sum(per["time_safeclip"]) / max(1e-9, sum(per["time_clip"])),
        **caption_details(args, caps), "per_seed": per, "rate": None if args.count is not None else args.rate,
        "count": args.count, "seeds": args.seeds, "overrides": args.overrides,
        "safeclip_overrides": args.safeclip, "wall_s": round(time.time() - t0, 1),
    }
    atomic_write_json(out, result)
    print(json.dumps({k: result[k] for k in ("caption_set", "backdoor", "targeted", "time_ratio_safeclip_over_clip")},
                     indent=2))


if __name__ == "__main__":
    script_main(main)
