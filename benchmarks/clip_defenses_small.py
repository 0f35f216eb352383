"""Plain CLIP, SafeCLIP, RoCLIP and CleanCLIP against the Carlini & Terzis attacks on the CLIP small preset.

For every seed it trains the four rows on the backdoor (``carlini-backdoor-small`` at ``--rate``, default 1 %, or
``--count`` poisons) and on targeted poisoning (``carlini-targeted-small``, 16 targets) — the same poisoned data,
trigger and evaluation as ``benchmarks/safeclip_small.py`` — plus the clean-data control (``clean_s{seed}``, the config of
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

The clean, plain, SafeCLIP and RoCLIP runs are the grid ``benchmarks/grids/clip_defenses_small.yaml`` (with
``--seeds``, ``--rate`` / ``--count``, ``--captions`` and ``--roclip`` applied; ``clpoison grid FILE --out WORK``
makes the same runs). The CleanCLIP runs are not grid cells: each one's config names its parent, the plain-CLIP
run of the same attack and seed, by that run folder's absolute path (``defense.params.checkpoint =
WORK/cells/backdoor_0.01_s0``), which a grid file cannot write (its values are not templates, and the path depends
on ``--work``), and ``clpoison grid`` refuses a grid whose cells name a path inside its own ``--out`` once that
path exists (the output guard: an output never contains an input, so ``--overwrite`` cannot delete one) — so every
re-run or shared ``--work`` folder would be refused. The script runs them after the grid with the harness's
:func:`_harness.run_named` into the same ``WORK/cells/NAME`` (reused when finished; with ``--summarise-only`` only
reused) and :func:`summarise` turns all the runs into the JSON.

``--captions`` trains on another caption set (a caption CSV/TSV, or tar shards such as ``shared/data/webcaps``;
zero-shot, ASR and targeted success then come from the labelled ``--eval-set``, default the bundled test split:
:mod:`_clip`). It writes ``{"caption_set", "rows": {clip, safeclip, roclip, cleanclip} ->
{"asr", "targeted", "zeroshot", "recall_at_5_i2t", "time_ratio"}, "clean_model": {"asr", "targeted", "zeroshot",
"recall_at_5_i2t"}}`` (means over seeds; ``targeted`` is the success rate over the 16 targets, ``zeroshot`` and
``recall_at_5_i2t`` the backdoor run's clean zero-shot top-1 and image→text R@5, ``time_ratio`` the pretraining
seconds of both attacks' runs over plain CLIP's), the 95 % intervals of ASR and targeted success (Wilson, hits
pooled over seeds) under ``ci95``, and the per-seed lists under ``per_seed``. ``--attacks backdoor`` (or
``targeted``) trains and summarises one attack only (the other's keys NaN; each row's zero-shot and R@5 are then
that attack's runs'), ``--no-control`` skips the clean-data control — e.g. targeted poisoning with victims from the
training distribution (``--attack-set test-captions``), whose clean model is evaluated apart (docs/webcaps.md):

    python benchmarks/clip_defenses_small.py --out benchmarks/results/clip_defenses_small.json --seeds 3 \\
        --work runs/clip_defenses_small_runs
    W=../shared/data/webcaps
    python benchmarks/clip_defenses_small.py --attacks backdoor --captions "$W/train-{000000..000003}.tar" \\
        --test-captions $W/test-000000.tar --count 100 --seeds 2 --cleanclip-epochs 10 40 --cleanclip-pairs 1000 4000 \\
        --out benchmarks/results/clip_defenses_webcaps_backdoor.json --work runs/webcaps_defenses
    python benchmarks/clip_defenses_small.py --attacks targeted --no-control --attack-set test-captions \\
        --captions "$W/train-{000000..000003}.tar" --test-captions $W/test-000000.tar --seeds 2 \\
        --cleanclip-epochs 40 --cleanclip-pairs 4000 \\
        --out benchmarks/results/clip_defenses_webcaps_victims.json --work runs/webcaps_defenses_victims
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from clpoison.experiments.config import deep_merge, load_preset
from clpoison.experiments.grid import CELLS_DIR, read_grid

from _clip import (add_caption_args, attack_list, backdoor_dose, caption_details, caption_sections, caption_set_name,
                   choose_cleanclip, cleanclip_overrides, cleanclip_variants, pooled_rate)
from _harness import (ECHO, GRIDS, comparison_parser, mean, override_keys, run_comparison, run_named, script_main,
                      seed_axis, start, write_result)

GRID = GRIDS / "clip_defenses_small.yaml"
ROWS = ("clip", "safeclip", "roclip", "cleanclip")
ATTACKS = (("backdoor", "carlini-backdoor-small"), ("targeted", "carlini-targeted-small"))
ATTACK_NAMES = tuple(a for a, _ in ATTACKS)
METRICS = ("asr", "targeted", "targeted_successes", "zeroshot", "recall_at_5_i2t", "zeroshot_targeted_run", "time_s")
#: a cell of the grid file: the attack, the defense row, the backdoor's dose tag
CELL = re.compile(r"^(?P<attack>backdoor|targeted)(?P<row>_safeclip|_roclip)?(?P<dose>_[0-9.]+)?_s\{seed\}$")


def grid_spec(seeds: int, rate: Optional[float] = 0.01, count: Optional[int] = None,
              captions: Optional[dict] = None, roclip: Sequence[str] = (),
              overrides: Sequence[str] = (), attacks: Sequence[str] = ATTACK_NAMES,
              control: bool = True, safeclip: Sequence[str] = ()) -> tuple[dict, list[str]]:
    """``(grid spec, the overrides for every cell)``: ``benchmarks/grids/clip_defenses_small.yaml`` over ``seeds``
    with the backdoor at ``rate`` or ``count`` (cells renamed ``backdoor*_{rate}`` / ``backdoor*_n{count}``), on the
    caption set's config sections ``captions`` and with the ``roclip`` / ``safeclip`` overrides on the RoCLIP /
    SafeCLIP cells; only the cells of ``attacks``, and the clean control only with ``control``. An override of
    ``overrides`` whose key a row's own override also sets goes to the other cells only (the row's wins there)."""
    spec = seed_axis(read_grid(GRID), seeds)
    spec["base"] = deep_merge(spec["base"], captions or {})
    dose_ov, tag = backdoor_dose(rate, count)
    dose = override_keys(dose_ov)
    extra = {"_roclip": override_keys(roclip), "_safeclip": override_keys(safeclip)}
    key = {o: next(iter(override_keys([o]))) for o in overrides}
    clash = [o for o in overrides if any(key[o] in e for e in extra.values())]
    cells = []
    for c in spec["cells"]:
        m = CELL.match(c["name"])
        if (m is None and not control) or (m is not None and m["attack"] not in attacks):
            continue
        row = m["row"] if m is not None else None
        if m is not None:  # not the clean control
            backdoor = m["attack"] == "backdoor"
            c = {k: v for k, v in c.items() if not k.startswith("attack.params.poison_")}
            c.update({**(dose if backdoor else {}), **extra.get(row, {})})
            c["name"] = f"{m['attack']}{row or ''}{tag if backdoor else ''}_s{{seed}}"
        c.update(override_keys([o for o in clash if key[o] not in extra.get(row, {})]))
        cells.append(c)
    spec["cells"] = cells
    return spec, [o for o in overrides if o not in clash]


def cleanclip_runs(work: Path, seeds: int, variants: dict, dose_ov: list[str], dose_tag: str, captions: dict,
                   overrides: Sequence[str], cleanclip: Sequence[str], reuse_only: bool = False,
                   attacks: Sequence[str] = ATTACK_NAMES) -> dict[str, dict]:
    """``{run name: results.json}`` of the CleanCLIP runs ``{attack}_cleanclip{variant}{dose}_s{seed}`` of
    ``attacks`` in ``work/cells``, each fine-tuning the plain-CLIP cell of its attack and seed there (``run_named``:
    reused when finished; ``reuse_only``: never trained)."""
    pre = load_preset("cleanclip-small")
    out = {}
    for s in range(seeds):
        for attack, preset in [a for a in ATTACKS if a[0] in attacks]:
            extra, tag = (dose_ov, dose_tag) if attack == "backdoor" else ([], "")
            parent = work / CELLS_DIR / f"{attack}{tag}_s{s}"
            for vtag, setting in variants.items():
                defense = {**pre["defense"], "params": {**pre["defense"].get("params", {}), "checkpoint": str(parent)}}
                data = {"preset": preset, **captions, "train": pre["train"], "defense": defense}
                name = f"{attack}_cleanclip{vtag}{tag}_s{s}"
                out[name], _ = run_named(name, data, [*extra, f"seed={s}", *overrides, *cleanclip_overrides(setting),
                                                      *cleanclip], work / CELLS_DIR, ECHO, reuse_only)
    return out


def summarise(runs: dict[str, dict], seeds: int, variants: dict, dose_tag: str,
              attacks: Sequence[str] = ATTACK_NAMES, control: bool = True) -> dict:
    """The JSON's ``rows``, ``clean_model``, ``ci95``, ``cleanclip_search``, ``cleanclip_choice`` and ``per_seed``
    from ``{run name: results.json}`` (the grid's cells and the CleanCLIP runs); the keys of an attack not in
    ``attacks``, and the clean model's without ``control``, are NaN (intervals ``None``)."""
    keys = [*ROWS[:-1], *(f"cleanclip{t}" for t in variants)]
    per: dict[str, dict[str, list]] = {r: {k: [] for k in METRICS} for r in keys}
    per["clean_model"] = {k: [] for k in ("asr", "targeted", "targeted_successes", "zeroshot", "recall_at_5_i2t")}
    raw: dict[str, dict[str, list]] = {r: {"backdoor": [], "targeted": []} for r in [*keys, "clean_model"]}
    for s in range(seeds):
        if control:
            cm = runs[f"clean_s{s}"]["metrics"]
            raw["clean_model"]["backdoor"].append(cm)
            raw["clean_model"]["targeted"].append(cm)
            for k, mk in (("asr", "asr"), ("targeted", "targeted_success_rate"), ("targeted_successes",
                          "targeted_successes"), ("zeroshot", "zeroshot_top1"), ("recall_at_5_i2t", "recall_at_5_i2t")):
                per["clean_model"][k].append(cm.get(mk))
        times = {r: 0.0 for r in keys}
        for attack in attacks:
            tag = dose_tag if attack == "backdoor" else ""
            for key in keys:
                res = runs[f"{attack}{tag}_s{s}" if key == "clip" else f"{attack}_{key}{tag}_s{s}"]
                m = res["metrics"]
                t = res["timings"]["pretrain_s"]
                if key.startswith("cleanclip"):  # the poisoned pretraining it starts from
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
                    if len(attacks) == 1:  # the clean zero-shot and retrieval of the only attack run
                        per[key]["zeroshot"].append(m["zeroshot_top1"])
                        per[key]["recall_at_5_i2t"].append(m.get("recall_at_5_i2t"))
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
    if not search:
        chosen, why = "", "preset"
    elif "backdoor" in attacks:
        chosen, why = choose_cleanclip(search, clean_model["asr"], rows["clip"]["zeroshot"])
    else:  # no ASR to choose by
        chosen = min(search, key=lambda t: search[t]["targeted"])
        why = "targeted poisoning only: the setting with the lowest targeted success"
    rows["cleanclip"] = row(f"cleanclip{chosen}")
    return {"rows": rows, "clean_model": clean_model,
            "ci95": {**{r: ci(r) for r in ROWS[:-1]}, "cleanclip": ci(f"cleanclip{chosen}"),
                     "clean_model": ci("clean_model")},
            "cleanclip_search": {t.lstrip("_"): r for t, r in search.items()},
            "cleanclip_choice": {"setting": chosen.lstrip("_") or "preset", "rule": why}, "per_seed": per}


def main() -> None:
    ap = comparison_parser(__doc__, seeds=3)
    ap.add_argument("--rate", type=float, default=0.01, help="backdoor poison rate")
    ap.add_argument("--count", type=int, default=None, help="backdoor poison count (instead of --rate)")
    add_caption_args(ap)
    ap.add_argument("--attacks", default="backdoor,targeted", help="which attacks (comma list of backdoor, "
                    "targeted); the other's keys are NaN. With one attack, each row's zero-shot and R@5 are that "
                    "attack's runs'")
    ap.add_argument("--no-control", action="store_true", help="skip the clean-data control (clean_model keys NaN)")
    ap.add_argument("--roclip", nargs="*", default=[], help="overrides for the RoCLIP runs only")
    ap.add_argument("--safeclip", nargs="*", default=[], help="overrides for the SafeCLIP runs only")
    ap.add_argument("--cleanclip", nargs="*", default=[], help="overrides for the CleanCLIP runs only")
    ap.add_argument("--cleanclip-epochs", type=int, nargs="+", default=None,
                    help="CleanCLIP fine-tuning epochs to try (default: the preset's 10)")
    ap.add_argument("--cleanclip-pairs", type=int, nargs="+", default=None,
                    help="CleanCLIP clean fine-tuning pairs to try (default: the preset's 1,000)")
    args = ap.parse_args()
    attacks = attack_list(args.attacks)
    out, work = start(args)
    work = work.resolve()
    caps = caption_sections(args)
    rate = None if args.count is not None else args.rate
    variants = cleanclip_variants(args.cleanclip_epochs, args.cleanclip_pairs)
    dose_ov, dose_tag = backdoor_dose(rate, args.count)
    t0 = time.time()
    spec, overrides = grid_spec(args.seeds, rate, args.count, caps, args.roclip, args.overrides, attacks,
                                not args.no_control, args.safeclip)
    runs = run_comparison(spec, work, overrides, args.summarise_only)
    runs.update(cleanclip_runs(work, args.seeds, variants, dose_ov, dose_tag, caps, args.overrides, args.cleanclip,
                               args.summarise_only, attacks))
    summary = summarise(runs, args.seeds, variants, dose_tag, attacks, not args.no_control)
    result: dict[str, Any] = {
        "caption_set": caption_set_name(args), **{k: v for k, v in summary.items() if k != "per_seed"},
        **caption_details(args, caps), "per_seed": summary["per_seed"], "rate": rate, "count": args.count,
        "seeds": args.seeds, "attacks": list(attacks), "control": not args.no_control, "overrides": args.overrides,
        "roclip_overrides": args.roclip, "safeclip_overrides": args.safeclip, "cleanclip_overrides": args.cleanclip, "wall_s": round(time.time() - t0, 1)}
    write_result(out, result, {k: result[k] for k in ("caption_set", "rows", "clean_model")})


if __name__ == "__main__":
    script_main(main)
