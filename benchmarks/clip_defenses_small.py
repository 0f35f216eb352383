"""Plain CLIP, SafeCLIP, RoCLIP and CleanCLIP against the Carlini & Terzis attacks on the CLIP small preset.

For every seed it trains, on the bundled data, the four rows on the 1% backdoor (``carlini-backdoor-small``) and on
targeted poisoning (``carlini-targeted-small``, 16 targets) — the same poisoned data, trigger and evaluation as
``benchmarks/safeclip_small.py`` — plus the clean-data control (``clean_s{seed}``, config
:func:`clpoison.experiments.bench.carlini_clean_control`):

* ``clip``: plain clip-small (runs ``backdoor_0.01_s0`` / ``targeted_s0``, the names and configs of
  ``carlini_small.py`` and ``safeclip_small.py``, so one ``--work`` folder trains each once);
* ``safeclip``: every section of the ``safeclip-small`` preset (as ``safeclip_small.py``, same run names);
* ``roclip``: the ``defense`` section of ``roclip-small`` (clip-small's schedule otherwise);
* ``cleanclip``: the ``train`` and ``defense`` sections of ``cleanclip-small``, fine-tuning the plain-CLIP run of
  the same attack and seed (``defense.params.checkpoint``). Its wall time counts the poisoned pretraining too.

It writes ``{"rows": {clip, safeclip, roclip, cleanclip} -> {"asr", "targeted", "zeroshot", "time_ratio"},
"clean_model": {"asr", "targeted", "zeroshot"}}`` (means over seeds; ``targeted`` is the success rate over the
16 targets, ``zeroshot`` the backdoor run's clean zero-shot top-1, ``time_ratio`` the pretraining seconds of both
attacks' runs over plain CLIP's) and the per-seed lists under ``per_seed``:

    python benchmarks/clip_defenses_small.py --out benchmarks/results/clip_defenses_small.json --seeds 3 \\
        --work runs/clip_defenses_small_runs
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial
from pathlib import Path

import torch

from clpoison.experiments.bench import carlini_clean_control, mean, run_named, script_main, work_dir
from clpoison.experiments.config import load_preset
from clpoison.utils.io import atomic_write_json

ECHO = partial(print, flush=True)
ROWS = ("clip", "safeclip", "roclip", "cleanclip")
ATTACKS = (("backdoor", "carlini-backdoor-small"), ("targeted", "carlini-targeted-small"))


def sections(preset: str, keys: tuple[str, ...]) -> dict:
    p = load_preset(preset)
    return {k: p[k] for k in keys if k in p}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--rate", type=float, default=0.01, help="backdoor poison rate")
    ap.add_argument("--work", default=None, help="run folders (default: OUT without suffix + '_runs')")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--roclip", nargs="*", default=[], help="overrides for the RoCLIP runs only")
    ap.add_argument("--cleanclip", nargs="*", default=[], help="overrides for the CleanCLIP runs only")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    work = work_dir(out, args.work).resolve()
    row_cfg = {"clip": {}, "safeclip": sections("safeclip-small", ("train", "defense")),
               "roclip": sections("roclip-small", ("train", "defense")),
               "cleanclip": sections("cleanclip-small", ("train", "defense"))}
    row_ov = {"clip": [], "safeclip": [], "roclip": args.roclip, "cleanclip": args.cleanclip}
    per: dict[str, dict[str, list]] = {r: {k: [] for k in ("asr", "targeted", "targeted_successes", "zeroshot",
                                                          "zeroshot_targeted_run", "time_s")} for r in ROWS}
    per["clean_model"] = {k: [] for k in ("asr", "targeted", "targeted_successes", "zeroshot")}
    t0 = time.time()
    for s in range(args.seeds):
        ov = [f"seed={s}"]
        clean, _ = run_named(f"clean_s{s}", carlini_clean_control(), ov, work, ECHO)
        cm = clean["metrics"]
        per["clean_model"]["asr"].append(cm["asr"])
        per["clean_model"]["targeted"].append(cm["targeted_success_rate"])
        per["clean_model"]["targeted_successes"].append(cm["targeted_successes"])
        per["clean_model"]["zeroshot"].append(cm["zeroshot_top1"])
        times = {r: 0.0 for r in ROWS}
        for attack, preset in ATTACKS:
            extra, tag = ([f"attack.params.poison_rate={args.rate}"], f"_{args.rate}") if attack == "backdoor" else ([], "")
            plain_name = f"{attack}{tag}_s{s}"
            for row in ROWS:
                name = plain_name if row == "clip" else f"{attack}_{row}{tag}_s{s}"
                data = {"preset": preset, **row_cfg[row]}
                if row == "cleanclip":
                    d = dict(data["defense"])
                    d["params"] = {**d.get("params", {}), "checkpoint": str(work / plain_name)}
                    data["defense"] = d
                res, _ = run_named(name, data, [*extra, *ov, *row_ov[row]], work, ECHO)
                m = res["metrics"]
                t = res["timings"]["pretrain_s"]
                if row == "cleanclip":  # the poisoned pretraining it starts from
                    t += res["defense"]["cleanclip_checkpoint_train_s"]
                times[row] += t
                if attack == "backdoor":
                    per[row]["asr"].append(m["asr"])
                    per[row]["zeroshot"].append(m["zeroshot_top1"])
                else:
                    per[row]["targeted"].append(m["targeted_success_rate"])
                    per[row]["targeted_successes"].append(m["targeted_successes"])
                    per[row]["zeroshot_targeted_run"].append(m["zeroshot_top1"])
        for r in ROWS:
            per[r]["time_s"].append(round(times[r], 2))
    clip_time = sum(per["clip"]["time_s"])
    rows = {r: {"asr": mean(per[r]["asr"]), "targeted": mean(per[r]["targeted"]), "zeroshot": mean(per[r]["zeroshot"]),
                "time_ratio": sum(per[r]["time_s"]) / max(1e-9, clip_time)} for r in ROWS}
    result = {
        "rows": rows,
        "clean_model": {k: mean(per["clean_model"][k]) for k in ("asr", "targeted", "zeroshot")},
        "per_seed": per, "rate": args.rate, "seeds": args.seeds, "roclip_overrides": args.roclip,
        "cleanclip_overrides": args.cleanclip, "wall_s": round(time.time() - t0, 1),
    }
    atomic_write_json(out, result)
    print(json.dumps({k: result[k] for k in ("rows", "clean_model")}, indent=2))


if __name__ == "__main__":
    script_main(main)
