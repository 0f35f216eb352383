"""The dose-response of the Carlini & Terzis attacks on CLIP in poison *counts*: the backdoor at fixed numbers of
poisoned pairs and targeted poisoning at fixed pairs per target, over seeds, beside the clean model.

For every seed it trains (presets ``carlini-backdoor-small`` / ``carlini-targeted-small``, i.e. ``clip-small``):

* ``clean_s{seed}``: the clean model, on which the same trigger and the same victims are evaluated (the
  clean-data control :func:`_rows.carlini_clean_control`);
* ``backdoor_n{N}_s{seed}``: the backdoor with exactly N poisoned pairs, for each N of ``--counts`` (default
  10, 25, 50, 100, 200 — Carlini & Terzis state the threat as a count: a rate means different counts on data sets
  of different sizes);
* ``targeted_k{K}_s{seed}``: targeted poisoning of 16 victims with K pairs per target (``pairs_per_target``), for
  each K of ``--pairs`` (default 1, 2, 5, 10); the preset's own K (5) keeps the name ``targeted_s{seed}`` of the
  other CLIP benchmarks.

The comparison is the grid ``benchmarks/grids/clip_dose_webcaps.yaml`` (the one source of the runs: its cells, with
``--seeds`` / ``--counts`` / ``--pairs`` applied, on the caption set of ``--captions`` in place of the file's
webcaps base) plus :func:`summarise`; the runs go to ``WORK/cells/NAME`` and are reused when finished
(``clpoison grid benchmarks/grids/clip_dose_webcaps.yaml --out WORK`` makes the webcaps runs; ``--summarise-only``
then writes the JSON). The run names and configs are those of ``safeclip_small.py`` (``--count``), so one
``--work`` folder trains each plain-CLIP run once. ``--captions`` trains on another caption set (a caption CSV/TSV
or tar shards, e.g. ``shared/data/webcaps``, with zero-shot, ASR and targeted success on the labelled
``--eval-set``: :mod:`_clip`). Writes OUT::

    {"caption_set", "clean": {"asr", "asr_ci95", "targeted", "targeted_ci95", "zeroshot", "recall_at_5_i2t"},
     "backdoor_by_count": {N: {"asr", "asr_ci95", "asr_std", "asr_per_seed", "zeroshot", "poison_rate"}},
     "targeted_by_pairs": {K: {"success", "success_ci95", "successes_per_seed", "expected_by_chance_per_seed",
                               "targets", "zeroshot"}}, ...}

(means over seeds; 95 % intervals: Wilson of the hits pooled over seeds, as the report; ``zeroshot`` is each run's
``metrics.zeroshot_top1``: on the attack set's images with ``--attack-set test-captions``) and PNGs beside it: count
→ ASR (OUT.png) and pairs per target → targeted success with the clean model and chance (OUT_pairs.png).
``clpoison report WORK --out R --dose-axis count`` draws the same runs with counts on the axis.

    python benchmarks/clip_dose.py --out benchmarks/results/clip_dose.json --seeds 2            # bundled captions
    python benchmarks/clip_dose.py --captions '../shared/data/webcaps/train-{000000..000003}.tar' \\
        --test-captions ../shared/data/webcaps/test-000000.tar --seeds 2 \\
        --out benchmarks/results/clip_dose_webcaps.json --work runs/webcaps_clip
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

from clpoison.experiments.config import load_preset
from clpoison.experiments.grid import read_grid
from clpoison.report.plots import curve_plot

from _clip import add_caption_args, caption_details, caption_sections, caption_set_name, pooled_rate
from _harness import GRIDS, comparison_parser, mean, run_comparison, script_main, seed_axis, start, stats, write_result

GRID = GRIDS / "clip_dose_webcaps.yaml"
COUNTS, PAIRS = [10, 25, 50, 100, 200], [1, 2, 5, 10]


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def preset_pairs() -> int:
    """The targeted preset's pairs per target: its cell keeps the name ``targeted_s{seed}`` of the other benchmarks."""
    return load_preset("carlini-targeted-small")["attack"]["params"]["pairs_per_target"]


def targeted_tag(k: int) -> str:
    """``""`` for the preset's pairs per target (the run ``targeted_s{seed}``), else ``_k{K}``."""
    return "" if k == preset_pairs() else f"_k{k}"


def grid_spec(seeds: int, counts: list[int] = COUNTS, pairs: list[int] = PAIRS,
              captions: Optional[dict] = None) -> dict:
    """The grid file's cells over ``seeds``, the backdoor at ``counts`` and targeted poisoning at ``pairs`` per
    target, on the caption set's config sections ``captions`` (``{}``: the presets' bundled data) instead of the
    file's webcaps base."""
    spec = seed_axis(read_grid(GRID), seeds)
    spec["base"] = captions or {}
    k0 = preset_pairs()
    cells = []
    for c in spec["cells"]:
        axes = c.get("axes") or {}
        if "attack.params.poison_count" in axes:
            axes["attack.params.poison_count"] = list(counts)
        if "attack.params.pairs_per_target" in axes:
            axes["attack.params.pairs_per_target"] = [k for k in pairs if k != k0]
        if any(not v for v in axes.values()) or (c["name"] == "targeted_s{seed}" and k0 not in pairs):
            continue
        cells.append(c)
    spec["cells"] = cells
    return spec


def summarise(runs: dict[str, dict], seeds: int, counts: list[int], pairs: list[int]) -> dict:
    """The JSON's ``clean``, ``backdoor_by_count``, ``targeted_by_pairs``, ``target`` and ``train_pairs`` from
    ``{cell name: results.json}``."""
    clean = [runs[f"clean_s{s}"]["metrics"] for s in range(seeds)]
    n_train = None
    for s in range(seeds):
        n_train = runs[f"clean_s{s}"]["data"].get("train_pairs", n_train)

    def zs(ms: list[dict]) -> float:
        return mean([m.get("zeroshot_top1") for m in ms])

    c_asr, c_tg = pooled_rate(clean, "asr"), pooled_rate(clean, "targeted_success_rate")
    result: dict[str, Any] = {
        "clean": {"asr": c_asr["mean"], "asr_ci95": c_asr["ci95"], "asr_per_seed": c_asr["per_seed"],
                  "targeted": c_tg["mean"], "targeted_ci95": c_tg["ci95"],
                  "successes_per_seed": [m.get("targeted_successes") for m in clean],
                  "expected_by_chance_per_seed": [m.get("targeted_expected_by_chance") for m in clean],
                  "zeroshot": zs(clean),
                  "recall_at_5_i2t": mean([m.get("recall_at_5_i2t") for m in clean])},
        "backdoor_by_count": {}, "targeted_by_pairs": {},
        "target": load_preset("carlini-backdoor-small")["attack"]["params"]["target"], "train_pairs": n_train}
    for n in counts:
        ms = [runs[f"backdoor_n{n}_s{s}"]["metrics"] for s in range(seeds)]
        r = pooled_rate(ms, "asr")
        result["backdoor_by_count"][str(n)] = {"asr": r["mean"], "asr_ci95": r["ci95"], "asr_std": r["std"],
                                               "asr_per_seed": r["per_seed"], "zeroshot": zs(ms),
                                               "poison_rate": n / n_train if n_train else None}
    for k in pairs:
        ms = [runs[f"targeted{targeted_tag(k)}_s{s}"]["metrics"] for s in range(seeds)]
        r = pooled_rate(ms, "targeted_success_rate")
        result["targeted_by_pairs"][str(k)] = {
            "success": r["mean"], "success_ci95": r["ci95"], "success_std": r["std"],
            "successes_per_seed": [m.get("targeted_successes") for m in ms],
            "expected_by_chance_per_seed": [m.get("targeted_expected_by_chance") for m in ms],
            "targets": stats([m.get("targeted_n") for m in ms])["mean"], "zeroshot": zs(ms)}
    return result


def main() -> None:
    ap = comparison_parser(__doc__, seeds=2, out_help="JSON result file (the plot goes next to it as .png)")
    ap.add_argument("--counts", type=int_list, default=COUNTS, help="backdoor poison counts")
    ap.add_argument("--pairs", type=int_list, default=PAIRS, help="targeted pairs per target (0: none)")
    add_caption_args(ap)
    args = ap.parse_args()
    out, work = start(args)
    work = work.resolve()
    caps = caption_sections(args)
    pairs = [k for k in args.pairs if k > 0]
    t0 = time.time()
    runs = run_comparison(grid_spec(args.seeds, args.counts, pairs, caps), work, args.overrides, args.summarise_only)
    result = {"caption_set": caption_set_name(args), **summarise(runs, args.seeds, args.counts, pairs),
              **caption_details(args, caps), "seeds": args.seeds, "overrides": args.overrides,
              "wall_s": round(time.time() - t0, 1)}
    write_result(out, result, {k: result[k] for k in ("caption_set", "clean", "backdoor_by_count",
                                                      "targeted_by_pairs")})
    if args.seeds and args.counts:
        plot(result, out.with_suffix(".png"))
    if args.seeds and pairs:
        plot_pairs(result, out.with_name(out.stem + "_pairs.png"))


def spans_decades(xs: list[int]) -> bool:
    """Whether the dose axis of ``xs`` is drawn logarithmic (a tenfold range or more)."""
    return len(xs) > 1 and max(xs) / max(1, min(xs)) >= 10


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
                       for i in range(seeds)], logx=spans_decades(counts))


def plot_pairs(result: dict, path: Path) -> None:
    """Pairs per target → targeted success rate (mean over seeds, each seed grey), beside the clean model's rate
    on the same victims and the rate expected by chance (the victims' label shares under each poisoned model)."""
    ks = [int(k) for k in result["targeted_by_pairs"]]
    rows = [result["targeted_by_pairs"][str(k)] for k in ks]
    seeds = len(result["clean"]["successes_per_seed"])

    def rate(hits: Any, targets: Any) -> Optional[float]:
        return None if hits is None or not targets else hits / targets

    chance = [mean([rate(c, r["targets"]) for c in r.get("expected_by_chance_per_seed") or []]) for r in rows]
    curves = {"mean over seeds": (ks, [r["success"] for r in rows]),
              "clean model": (ks, [result["clean"]["targeted"]] * len(ks))}
    if all(c == c for c in chance):  # NaN when a run recorded no chance level
        curves["expected by chance"] = (ks, chance)
    curve_plot(path, curves, "poisoned pairs per target", "targeted success rate",
               f"Carlini & Terzis targeted poisoning by pairs — captions: {result['caption_set']}", ylim=(0, 1),
               points=[(ks, [rate(r["successes_per_seed"][i], r["targets"]) for r in rows]) for i in range(seeds)],
               logx=spans_decades(ks))


if __name__ == "__main__":
    script_main(main)
