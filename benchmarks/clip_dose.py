"""The dose-response of the Carlini & Terzis attacks on CLIP in poison *counts*: the backdoor at fixed numbers of
poisoned pairs and targeted poisoning at fixed pairs per target, over seeds, beside the clean model.

For every seed it trains (presets ``carlini-backdoor-small`` / ``carlini-targeted-small``, i.e. ``clip-small``):

* ``clean_s{seed}``: the clean model, on which the same trigger and the same victims are evaluated (the
  clean-data control :func:`clpoison.experiments.bench.carlini_clean_control`);
* ``backdoor_n{N}_s{seed}``: the backdoor with exactly N poisoned pairs, for each N of ``--counts`` (default
  10, 25, 50, 100, 200 — Carlini & Terzis state the threat as a count: a rate means different counts on data sets
  of different sizes);
* ``targeted_k{K}_s{seed}``: targeted poisoning of 16 victims with K pairs per target (``pairs_per_target``), for
  each K of ``--pairs`` (default 1, 2, 5, 10); the preset's own K (5) keeps the name ``targeted_s{seed}`` of the
  other CLIP benchmarks.

The run names and configs are those of ``clip_defenses_small.py`` / ``safeclip_small.py`` (``--count``), so one
``--work`` folder trains each plain-CLIP run once. ``--captions`` trains on another caption set (a caption CSV/TSV
or tar shards, e.g. ``shared/data/webcaps``, with zero-shot, ASR and targeted success on the labelled
``--eval-set``: :mod:`clpoison.experiments.clip_bench`). Writes OUT::

    {"caption_set", "clean": {"asr", "asr_ci95", "targeted", "targeted_ci95", "zeroshot", "recall_at_5_i2t"},
     "backdoor_by_count": {N: {"asr", "asr_ci95", "asr_std", "asr_per_seed", "zeroshot", "poison_rate"}},
     "targeted_by_pairs": {K: {"success", "success_ci95", "successes_per_seed", "targets", "zeroshot"}}, ...}

(means over seeds; 95 % intervals: Wilson of the hits pooled over seeds, as the report) and a PNG of count → ASR
beside it. ``clpoison report WORK --out R --dose-axis count`` draws the same runs with counts on the axis.

    python benchmarks/clip_dose.py --out benchmarks/results/clip_dose.json --seeds 2            # bundled captions
    python benchmarks/clip_dose.py --captions '../shared/data/webcaps/train-{000000..000003}.tar' \\
        --test-captions ../shared/data/webcaps/test-000000.tar --seeds 2 \\
        --out benchmarks/results/clip_dose_webcaps.json --work runs/webcaps_clip
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial
from pathlib import Path


from clpoison.experiments.bench import carlini_clean_control, mean, run_named, script_main, stats
from clpoison.experiments.clip_bench import (add_bench_args, backdoor_dose, caption_details, caption_set_name,
                                             pooled_rate, start)
from clpoison.experiments.config import load_preset
from clpoison.report.plots import curve_plot
from clpoison.utils.io import atomic_write_json

ECHO = partial(print, flush=True)


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def targeted_tag(k: int) -> str:
    """``""`` for the preset's pairs per target (the run ``targeted_s{seed}`` of the other benchmarks), else
    ``_k{K}``."""
    return "" if k == load_preset("carlini-targeted-small")["attack"]["params"]["pairs_per_target"] else f"_k{k}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSON result file (the plot goes next to it as .png)")
    ap.add_argument("--counts", type=int_list, default=[10, 25, 50, 100, 200], help="backdoor poison counts")
    ap.add_argument("--pairs", type=int_list, default=[1, 2, 5, 10], help="targeted pairs per target (0: none)")
    add_bench_args(ap, seeds=2)
    ap.add_argument("overrides", nargs="*", help="config overrides for every run, e.g. train.epochs=10")
    args = ap.parse_args()
    out, work, caps = start(args)
    pairs = [k for k in args.pairs if k > 0]
    clean: list[dict] = []
    bd: dict[int, list[dict]] = {n: [] for n in args.counts}
    tg: dict[int, list[dict]] = {k: [] for k in pairs}
    n_train = None
    t0 = time.time()
    for s in range(args.seeds):
        ov = [f"seed={s}", *args.overrides]
        res, _ = run_named(f"clean_s{s}", {**carlini_clean_control(), **caps}, ov, work, ECHO)
        clean.append(res["metrics"])
        n_train = res["data"].get("train_pairs", n_train)
        for n in args.counts:
            extra, tag = backdoor_dose(count=n)
            bd[n].append(run_named(f"backdoor{tag}_s{s}", {"preset": "carlini-backdoor-small", **caps},
                                   [*extra, *ov], work, ECHO)[0]["metrics"])
        for k in pairs:
            tg[k].append(run_named(f"targeted{targeted_tag(k)}_s{s}", {"preset": "carlini-targeted-small", **caps},
                                   [f"attack.params.pairs_per_target={k}", *ov], work, ECHO)[0]["metrics"])

    def zs(ms: list[dict]) -> float:
        return mean([m.get("zeroshot_top1") for m in ms])

    c_asr, c_tg = pooled_rate(clean, "asr"), pooled_rate(clean, "targeted_success_rate")
    result = {
        "caption_set": caption_set_name(args),
        "clean": {"asr": c_asr["mean"], "asr_ci95": c_asr["ci95"], "asr_per_seed": c_asr["per_seed"],
                  "targeted": c_tg["mean"], "targeted_ci95": c_tg["ci95"],
                  "successes_per_seed": [m.get("targeted_successes") for m in clean], "zeroshot": zs(clean),
                  "recall_at_5_i2t": mean([m.get("recall_at_5_i2t") for m in clean])},
        "backdoor_by_count": {},
        "targeted_by_pairs": {},
        "target": load_preset("carlini-backdoor-small")["attack"]["params"]["target"],
        "train_pairs": n_train, **caption_details(args, caps), "seeds": args.seeds, "overrides": args.overrides,
        "wall_s": round(time.time() - t0, 1),
    }
    for n, ms in bd.items():
        r = pooled_rate(ms, "asr")
        result["backdoor_by_count"][str(n)] = {"asr": r["mean"], "asr_ci95": r["ci95"], "asr_std": r["std"],
                                               "asr_per_seed": r["per_seed"], "zeroshot": zs(ms),
                                               "poison_rate": n / n_train if n_train else None}
    for k, ms in tg.items():
        r = pooled_rate(ms, "targeted_success_rate")
        result["targeted_by_pairs"][str(k)] = {
            "success": r["mean"], "success_ci95": r["ci95"], "success_std": r["std"],
            "successes_per_seed": [m.get("targeted_successes") for m in ms],
            "targets": stats([m.get("targeted_n") for m in ms])["mean"], "zeroshot": zs(ms)}
    atomic_write_json(out, result)
    if args.seeds and args.counts:
        plot(result, out.with_suffix(".png"))
    print(json.dumps({k: result[k] for k in ("caption_set", "clean", "backdoor_by_count", "targeted_by_pairs")},
                     indent=2))


def plot(result: dict, path: Path) -> None:
    """Poison count → backdoor ASR (mean over seeds, each seed grey) and the clean model's ASR as a flat line."""
    counts = [int(n) for n in result["backdoor_by_count"]]
    asr = [result["backdoor_by_count"][str(n)]["asr"] for n in counts]
    seeds = len(result["clean"]["asr_per_seed"])
    curve_plot(path, {"mean over seeds": (counts, asr),
                      "clean model": (counts, [result["clean"]["asr"]] * len(counts))},
               "poisoned pairs (count)", f"zero-shot ASR (target '{result['target']}')",
               f"Carlini & Terzis backdoor by count — captions: {result['caption_set']}", ylim=(0, 1),
               points=[(counts, [result["backdoor_by_count"][str(n)]["asr_per_seed"][i] for n in counts])
                       for i in range(seeds)], logx=len(counts) > 1 and max(counts) / max(1, min(counts)) >= 10)


if __name__ == "__main__":
    script_main(main)
