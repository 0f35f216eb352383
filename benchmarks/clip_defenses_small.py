"""Plain CLIP, SafeCLIP, RoCLIP and CleanCLIP against the Carlini & Terzis attacks on the CLIP small preset.

For every seed it trains the four rows on the backdoor (``carlini-backdoor-small`` at ``--rate``, default 1 %, or
``--count`` poisons) and on targeted poisoning (``carlini-targeted-small``, 16 targets) — the same poisoned data,
trigger and evaluation as ``benchmarks/safeclip_small.py`` — plus the clean-data control (``clean_s{seed}``, config
:func:`_rows.carlini_clean_control`):

* ``clip``: plain clip-small (runs ``backdoor_0.01_s0`` / ``backdoor_n100_s0`` / ``targeted_s0``, the names and
  configs of ``carlini_small.py``, ``safeclip_small.py`` and ``clip_dose.py``, and like theirs in
  ``WORK/cells/NAME``, so one ``--work`` folder trains each once);
* ``safeclip``: every section of the ``safeclip-small`` preset (as ``safeclip_small.py``, same run names);
* ``roclip``: the ``defense`` section of ``roclip-small`` (clip-small's schedule otherwise);
* ``cleanclip``: the ``train`` and ``defense`` sections of ``cleanclip-small``, fine-tuning the plain-CLIP run of
  the same attack and seed (``defense.params.checkpoint``). Its wall time counts the poisoned pretraining too.
  ``--cleanclip-epochs`` / ``--cleanclip-pairs`` (lists) search the fine-tuning length and the clean-set size:
  every combination is trained (runs ``*_cleanclip_e{E}_p{P}_*``) and recorded under ``cleanclip_search``; the
  ``cleanclip`` row is the cheapest combination (fewest epochs × pairs) whose mean ASR is within 0.10 of the clean
  model's and whose zero-shot is within 0.05 of plain CLIP's, else the one with the lowest ASR
  (``cleanclip_choice`` says which and why).

``--captions`` trains on another caption set (a caption CSV/TSV, or tar shards such as ``shared/data/webcaps``;
zero-shot, ASR and targeted success then come from the labelled ``--eval-set``, default the bundled test split:
:mod:`_clip`). It writes ``{"caption_set", "rows": {clip, safeclip, roclip, cleanclip} ->
{"asr", "targeted", "zeroshot", "recall_at_5_i2t", "time_ratio"}, "clean_model": {"asr", "targeted", "zeroshot",
"recall_at_5_i2t"}}`` (means over seeds; ``targeted`` is the success rate over the 16 targets, ``zeroshot`` and
``recall_at_5_i2t`` the backdoor run's clean zero-shot top-1 and image→text R@5, ``time_ratio`` the pretraining
seconds of both attacks' runs over plain CLIP's), the 95 % intervals of ASR and targeted success (Wilson, hits
pooled over seeds) under ``ci95``, and the per-seed lists under ``per_seed``:

    python benchmarks/clip_defenses_small.py --out benchmarks/results/clip_defenses_small.json --seeds 3 \\
        --work runs/clip_defenses_small_runs
    python benchmarks/clip_defenses_small.py --captions '../shared/data/webcaps/train-{000000..000003}.tar' \\
        --test-captions ../shared/data/webcaps/test-000000.tar --count 100 --seeds 2 \\
        --out benchmarks/results/clip_defenses_webcaps.json --work runs/webcaps_clip
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial


from clpoison.experiments.config import load_preset
from clpoison.utils.io import atomic_write_json

from _clip import (add_bench_args, backdoor_dose, caption_details, caption_set_name, choose_cleanclip,
                   cleanclip_overrides, cleanclip_variants, pooled_rate, start)
from _harness import mean, run_named, script_main
from _rows import carlini_clean_control

ECHO = partial(print, flush=True)
ROWS = ("clip", "safeclip", "roclip", "cleanclip")
ATTACKS = (("backdoor", "carlini-backdoor-small"), ("targeted", "carlini-targeted-small"))
METRICS = ("asr", "targeted", "targeted_successes", "zeroshot", "recall_at_5_i2t", "zeroshot_targeted_run", "time_s")


def sections(preset: str, keys: tuple[str, ...]) -> dict:
    p = load_preset(preset)
    return {k: p[k] for k in keys if k in p}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--rate", type=float, default=0.01, help="backdoor poison rate")
    ap.add_argument("--count", type=int, default=None, help="backdoor poison count (instead of --rate)")
    add_bench_args(ap, seeds=3)
    ap.add_argument("--roclip", nargs="*", default=[], help="overrides for the RoCLIP runs only")
    ap.add_argument("--cleanclip", nargs="*", default=[], help="overrides for the CleanCLIP runs only")
    ap.add_argument("--cleanclip-epochs", type=int, nargs="+", default=None,
                    help="CleanCLIP fine-tuning epochs to try (default: the preset's 10)")
    ap.add_argument("--cleanclip-pairs", type=int, nargs="+", default=None,
                    help="CleanCLIP clean fine-tuning pairs to try (default: the preset's 1,000)")
    ap.add_argument("overrides", nargs="*", help="config overrides for every run, e.g. train.epochs=10")
    args = ap.parse_args()
    out, work, caps = start(args)
    work = work / "cells"  # the run folders of the grid-backed CLIP scripts (carlini_small, safeclip_small, ...)
    row_cfg = {"clip": {}, "safeclip": sections("safeclip-small", ("train", "defense")),
               "roclip": sections("roclip-small", ("train", "defense")),
               "cleanclip": sections("cleanclip-small", ("train", "defense"))}
    variants = cleanclip_variants(args.cleanclip_epochs, args.cleanclip_pairs)
    bd_ov, bd_tag = backdoor_dose(None if args.count is not None else args.rate, args.count)
    keys = [*ROWS[:-1], *(f"cleanclip{t}" for t in variants)]
    per: dict[str, dict[str, list]] = {r: {k: [] for k in METRICS} for r in keys}
    per["clean_model"] = {k: [] for k in ("asr", "targeted", "targeted_successes", "zeroshot", "recall_at_5_i2t")}
    raw: dict[str, dict[str, list]] = {r: {"backdoor": [], "targeted": []} for r in [*keys, "clean_model"]}
    t0 = time.time()
    for s in range(args.seeds):
        ov = [f"seed={s}", *args.overrides]
        clean, _ = run_named(f"clean_s{s}", {**carlini_clean_control(), **caps}, ov, work, ECHO)
        cm = clean["metrics"]
        raw["clean_model"]["backdoor"].append(cm)
        raw["clean_model"]["targeted"].append(cm)
        for k, mk in (("asr", "asr"), ("targeted", "targeted_success_rate"), ("targeted_successes",
                      "targeted_successes"), ("zeroshot", "zeroshot_top1"), ("recall_at_5_i2t", "recall_at_5_i2t")):
            per["clean_model"][k].append(cm.get(mk))
        times = {r: 0.0 for r in keys}
        for attack, preset in ATTACKS:
            extra, tag = (bd_ov, bd_tag) if attack == "backdoor" else ([], "")
            plain_name = f"{attack}{tag}_s{s}"
            for key in keys:
                row = "cleanclip" if key.startswith("cleanclip") else key
                name = plain_name if row == "clip" else f"{attack}_{key}{tag}_s{s}"
                data = {"preset": preset, **caps, **row_cfg[row]}
                row_ov = (args.roclip if row == "roclip" else [] if row != "cleanclip" else
                          [*cleanclip_overrides(variants[key[len(row):]]), *args.cleanclip])
                if row == "cleanclip":
                    d = dict(data["defense"])
                    d["params"] = {**d.get("params", {}), "checkpoint": str(work / plain_name)}
                    data["defense"] = d
                res, _ = run_named(name, data, [*extra, *ov, *row_ov], work, ECHO)
                m = res["metrics"]
                t = res["timings"]["pretrain_s"]
                if row == "cleanclip":  # the poisoned pretraining it starts from
                    t += res["defense"]["cleanclip_checkpoint_train_s"]
                times[key] += t
                raw[key][attack].append(m)
                if attack == "backdoor":
                    per[key]["asr"].append(m["asr"])
                    per[key]["zeroshot"].append(m["zeroshot_top1"])
                    per[key]["recall_at_5_i2t"].append(m.get("recall_at_5_i2t"))
                else:
                    per[key]["targeted"].append(m["targeted_success_rate"])
                    per[key]["targeted_successes"].append(m["targeted_successes"])
                    per[key]["zeroshot_targeted_run"].append(m["zeroshot_top1"])
        for r in keys:
            per[r]["time_s"].append(round(times[r], 2))
    clip_time = sum(per["clip"]["time_s"])

    def row(r: str) -> dict:
        return {"asr": mean(per[r]["asr"]), "targeted": mean(per[r]["targeted"]), "zeroshot": mean(per[r]["zeroshot"]),
                "recall_at_5_i2t": mean(per[r]["recall_at_5_i2t"]),
                "time_ratio": sum(per[r]["time_s"]) / max(1e-9, clip_time)}

    def ci(r: str) -> dict:
        return {"asr": pooled_rate(raw[r]["backdoor"], "asr")["ci95"],
                "targeted": pooled_rate(raw[r]["targeted"], "targeted_success_rate")["ci95"]}

    clean_model = {k: mean(per["clean_model"][k]) for k in ("asr", "targeted", "zeroshot", "recall_at_5_i2t")}
    rows = {r: row(r) for r in ROWS[:-1]}
    search = {t: {**row(f"cleanclip{t}"), "epochs": v[0], "pairs": v[1]} for t, v in variants.items() if v}
    chosen, why = choose_cleanclip(search, clean_model["asr"], rows["clip"]["zeroshot"]) if search else ("", "preset")
    rows["cleanclip"] = row(f"cleanclip{chosen}")
    result = {
        "caption_set": caption_set_name(args), "rows": rows, "clean_model": clean_model,
        "ci95": {**{r: ci(r) for r in ROWS[:-1]}, "cleanclip": ci(f"cleanclip{chosen}"),
                 "clean_model": ci("clean_model")},
        "cleanclip_search": {t.lstrip("_"): r for t, r in search.items()},
        "cleanclip_choice": {"setting": chosen.lstrip("_") or "preset", "rule": why},
        **caption_details(args, caps), "per_seed": per, "rate": None if args.count is not None else args.rate,
        "count": args.count, "seeds": args.seeds, "overrides": args.overrides, "roclip_overrides": args.roclip,
        "cleanclip_overrides": args.cleanclip, "wall_s": round(time.time() - t0, 1),
    }
    atomic_write_json(out, result)
    print(json.dumps({k: result[k] for k in ("caption_set", "rows", "clean_model")}, indent=2))


if __name__ == "__main__":
    script_main(main)
