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
(the ``clean_s{seed}`` run of ``carlini_small.py``, config :func:`_rows.carlini_clean_control`)
gives each seed's ASR floor: the share of triggered non-airplane images that an *unpoisoned* model already calls
airplane (``backdoor.asr_clean_model``, and ``targeted.successes_clean_model``). ``--no-control`` skips both
controls. The comparison is the grid ``benchmarks/grids/safeclip_small.yaml`` (the one source of the runs, with
``--seeds``, ``--rate`` / ``--count``, ``--attacks``, ``--no-control``, ``--captions`` and ``--safeclip`` applied)
plus :func:`summarise`. Finished runs are kept under ``--work`` (``WORK/cells/NAME``) and reused; the plain-CLIP
runs have the same names and configs as those of ``benchmarks/carlini_small.py`` (``backdoor_0.01_s0``,
``targeted_s0``, ``clean_s0``), so pointing both scripts at one ``--work`` folder trains each plain model once
(``clpoison grid benchmarks/grids/safeclip_small.yaml --out WORK`` makes the same runs; ``--summarise-only`` then
writes the JSON):

    python benchmarks/carlini_small.py --out benchmarks/results/carlini_small.json --work runs/carlini_small_runs
    python benchmarks/safeclip_small.py --out benchmarks/results/safeclip_small.json --work runs/carlini_small_runs

``--captions`` trains every run on another caption set (a caption CSV/TSV or tar shards such as
``shared/data/webcaps``; zero-shot, ASR and targeted success then come from the labelled ``--eval-set``:
:mod:`_clip`), ``--count`` gives the backdoor as a poison count (runs
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

import re
import time
from typing import Any, Optional

from clpoison.experiments.config import deep_merge
from clpoison.experiments.grid import expand_grid, read_grid

from _clip import add_caption_args, attack_list, backdoor_dose, caption_details, caption_sections, caption_set_name
from _harness import (GRIDS, comparison_parser, mean, override_keys, run_comparison, script_main, seed_axis, start,
                      write_result)

GRID = GRIDS / "safeclip_small.yaml"
ATTACKS = ("backdoor", "targeted")
#: a cell of the grid file: the attack, SafeCLIP or not, the backdoor's dose tag, the same-epochs control's tag
CELL = re.compile(r"^(?P<attack>backdoor|targeted)(?P<safe>_safeclip)?(?P<dose>_[0-9.]+|_n[0-9]+)?(?P<short>_e[0-9]+)?"
                  r"_s\{seed\}$")
PER_SEED = ("asr_clip", "asr_safeclip", "zeroshot_clip", "zeroshot_safeclip", "poison_recall_risky",
            "poison_recall_risky_targeted", "success_clip", "success_safeclip", "successes_clip", "successes_safeclip",
            "time_clip", "time_safeclip", "asr_clip_same_epochs", "zeroshot_clip_same_epochs",
            "success_clip_same_epochs", "successes_clip_same_epochs", "asr_clean_model", "successes_clean_model",
            "chance_clip", "chance_safeclip", "chance_clean_model")


def grid_spec(seeds: int, rate: Optional[float] = 0.01, count: Optional[int] = None,
              attacks: tuple = ATTACKS, control: bool = True, captions: Optional[dict] = None,
              safeclip: tuple = (), overrides: tuple = ()) -> tuple[dict, Optional[int]]:
    """``(grid spec, SafeCLIP's epochs)``: ``benchmarks/grids/safeclip_small.yaml`` over ``seeds`` with the backdoor
    at ``rate`` or ``count`` (cells renamed ``backdoor_{rate}`` / ``backdoor_n{count}``), the cells of ``attacks``
    only, without the two controls unless ``control``, on the caption set's config sections ``captions`` and with
    the ``safeclip`` overrides on the SafeCLIP cells; the same-epochs controls train as long as the SafeCLIP cells
    do after every override (named ``_e{epochs}``)."""
    spec = seed_axis(read_grid(GRID), seeds)
    spec["base"] = deep_merge(spec["base"], captions or {})
    dose_ov, dose_tag = backdoor_dose(rate, count)
    dose, extra = override_keys(dose_ov), override_keys(safeclip)
    cells = []
    for c in spec["cells"]:
        m = CELL.match(c["name"])
        if m is None:  # the clean-data control
            if control:
                cells.append(c)
            continue
        if m["attack"] not in attacks or (m["short"] and not control):
            continue
        c = {k: v for k, v in c.items() if not k.startswith("attack.params.poison_")}
        tag = dose_tag if m["attack"] == "backdoor" else ""
        c.update(dose if m["attack"] == "backdoor" else {})
        c.update(extra if m["safe"] else {})
        c["name"] = f"{m['attack']}{m['safe'] or ''}{tag}{'{short}' if m['short'] else ''}_s{{seed}}"
        cells.append(c)
    safe = [c for c in cells if "_safeclip" in c["name"]]
    epochs = expand_grid({**spec, "axes": {"seed": [0]}, "cells": safe[:1]}, list(overrides))[0].config.train.epochs \
        if safe else None
    for c in cells:
        if "{short}" in c["name"]:
            c["name"] = c["name"].replace("{short}", f"_e{epochs}")
            c["train.epochs"] = epochs
    spec["cells"] = cells
    return spec, epochs


def summarise(runs: dict[str, dict], seeds: int, attacks: tuple, dose_tag: str, control: bool,
              epochs: Optional[int]) -> dict:
    """The JSON's ``backdoor``, ``targeted``, ``safeclip_epochs``, ``time_ratio_safeclip_over_clip`` and ``per_seed``
    from ``{cell name: results.json}``."""
    per: dict[str, list] = {k: [] for k in PER_SEED}
    for s in range(seeds):
        if control:
            clean = runs[f"clean_s{s}"]["metrics"]
            per["asr_clean_model"].append(clean["asr"])
            per["successes_clean_model"].append(clean["targeted_successes"])
            per["chance_clean_model"].append(clean.get("targeted_expected_by_chance"))
        for attack in attacks:
            tag = dose_tag if attack == "backdoor" else ""
            plain, safe = runs[f"{attack}{tag}_s{s}"], runs[f"{attack}_safeclip{tag}_s{s}"]
            short = runs[f"{attack}{tag}_e{epochs}_s{s}"] if control else None
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
    return {
        "backdoor": {k: mean(per[k]) for k in ("asr_clip", "asr_safeclip", "zeroshot_clip", "zeroshot_safeclip",
                                               "poison_recall_risky", "asr_clip_same_epochs",
                                               "zeroshot_clip_same_epochs", "asr_clean_model")},
        "targeted": {k: mean(per[k]) for k in ("success_clip", "success_safeclip", "success_clip_same_epochs",
                                               "successes_clean_model", "poison_recall_risky_targeted",
                                               "chance_clip", "chance_safeclip", "chance_clean_model")},
        "safeclip_epochs": epochs,
        "time_ratio_safeclip_over_clip": sum(per["time_safeclip"]) / max(1e-9, sum(per["time_clip"])),
        "per_seed": per,
    }


def main() -> None:
    ap = comparison_parser(__doc__, seeds=3)
    ap.add_argument("--rate", type=float, default=0.01, help="backdoor poison rate")
    ap.add_argument("--count", type=int, default=None, help="backdoor poison count (instead of --rate)")
    add_caption_args(ap)
    ap.add_argument("--attacks", default="backdoor,targeted",
                    help="which attacks, in this order (comma list of backdoor, targeted); the other's keys are NaN")
    ap.add_argument("--no-control", action="store_true", help="skip the two controls (plain CLIP at SafeCLIP's "
                    "epoch count, and on clean data)")
    ap.add_argument("--safeclip", nargs="*", default=[], help="overrides for the SafeCLIP runs only (defense.params.*)")
    args = ap.parse_args()
    out, work = start(args)
    work = work.resolve()
    caps = caption_sections(args)
    attacks = attack_list(args.attacks)
    rate = None if args.count is not None else args.rate
    spec, epochs = grid_spec(args.seeds, rate, args.count, attacks, not args.no_control, caps, tuple(args.safeclip),
                             tuple(args.overrides))
    t0 = time.time()
    runs = run_comparison(spec, work, args.overrides, args.summarise_only)
    result: dict[str, Any] = {
        "caption_set": caption_set_name(args),
        **summarise(runs, args.seeds, attacks, backdoor_dose(rate, args.count)[1], not args.no_control, epochs),
        **caption_details(args, caps), "rate": rate, "count": args.count, "seeds": args.seeds,
        "overrides": args.overrides, "safeclip_overrides": args.safeclip, "wall_s": round(time.time() - t0, 1)}
    write_result(out, result, {k: result[k] for k in ("caption_set", "backdoor", "targeted",
                                                      "time_ratio_safeclip_over_clip")})


if __name__ == "__main__":
    script_main(main)
