"""CorruptEncoder small benchmark: CA and ASR of six rows at one poison budget, over seeds, in the paper's setting.

Rows (JSON keys): ``clean`` (no poisons; the same trigger evaluated on the clean encoder), ``ssl_backdoor``,
``poisoned_encoder``, ``corruptencoder``, ``corruptencoder_plus``, ``corruptencoder_localized_cropping``
(CorruptEncoder poisons, localized-cropping defense) → ``{"ca", "asr"}`` each as mean, std and per-seed lists,
``asr_trace`` (per seed: ``{"epochs", "asr", "ca"}`` from the periodic evaluations, ``eval.every_epochs``), the wall
time of every row and the crafting speed (poisoned images/s, from the manifests). ``_meta`` records the setting:
``target_in_pretraining`` and the excluded classes (from the manifests), and the trigger's area fraction in the
poisons at training time (mean over the added poisons of each row) and in a test image.
The comparison is the grid ``benchmarks/grids/corruptencoder_small.yaml`` (the one source of the rows, shared
with ``corruptencoder_search.py`` and ``decree_small.py`` through :mod:`_rows`; everything a row does not state
comes from the ``corruptencoder-small`` preset: target, budget, trigger, SimCLR recipe) plus :func:`summarise`.
Extra ``key=value`` overrides apply to every run; an ``attack.params.KEY`` one goes to every row whose attack has
the parameter KEY, except a row that sets it itself (the clean row keeps zero poisons). ``--rows`` picks a subset
(an unknown row ends the script with one ``error: ...`` line and status 2). Finished runs are kept under ``--work``
(``WORK/cells/NAME``) and reused on re-runs; ``clpoison grid benchmarks/grids/corruptencoder_small.yaml --out WORK``
makes the same runs, which ``--summarise-only`` summarises.

The ``corruptencoder-small`` preset keeps the target class (airplane) out of pretraining, as the paper
(docs/corruptencoder.md); ``data.exclude_classes=[] attack.params.target_in_pretraining=null`` gives the
"target inside pretraining" ablation (the SSL-Backdoor row states ``mode: add`` and ``poison_scale: 2.0``, the
paper's added copies: ``attack.params.mode=replace attack.params.poison_scale=1.0`` patch in place instead).

    python benchmarks/corruptencoder_small.py --out runs/corruptencoder_small.json --seeds 3
    python benchmarks/corruptencoder_small.py --out /tmp/ce.json --seeds 1 train.epochs=1 data.train_limit=512   # smoke
"""

from __future__ import annotations

import json
import time
from typing import Any, Optional

from clpoison.experiments.config import load_preset
from clpoison.report.tables import history_curve

from _harness import comparison_parser, run_comparison, script_main, split_overrides, start, stats, write_result
from _rows import CORRUPTENCODER_PRESET, corruptencoder_row_names, corruptencoder_rows, corruptencoder_spec


def trigger_size(man: dict) -> Optional[int]:
    """The side of the manifest's (square patch) trigger, or None."""
    shape = man.get("trigger", {}).get("shape")
    return int(shape[-1]) if shape else None


def trigger_area(man: dict) -> Optional[float]:
    """Mean share of a poison's valid area that the trigger covers (composites: the ``layout`` geometry; added
    SSL-Backdoor copies: the poison size), or None without added poisons."""
    det, t = man.get("details", {}), trigger_size(man)
    if not t or not det.get("poison_count"):
        return None
    if det.get("layout"):
        areas = [t * t / (g["p_h"] * g["p_w"]) for g in det["layout"] if g.get("kind") != "support"]
        return sum(areas) / len(areas) if areas else None
    side = 32 * float(det.get("poison_scale", 1.0))
    return t * t / (side * side)


def summarise(runs: dict[str, dict], manifests: dict[str, dict], rows: list[str], seeds: int) -> dict:
    """The JSON's rows and the setting part of ``_meta`` from ``{cell name: results.json}`` and ``{cell name:
    manifest.json or {}}``; prints each run's CA, ASR and ASR trace."""
    per: dict[str, dict[str, list]] = {r: {"ca": [], "asr": [], "wall_s": [], "craft": [], "n": [], "trace": [],
                                           "area": []} for r in rows}
    setting: dict[str, Any] = {}
    for s in range(seeds):
        for r in rows:
            res, man = runs[f"{r}_s{s}"], manifests.get(f"{r}_s{s}") or {}
            m, wall, trace = res["metrics"], res["timings"].get("total_s", float("nan")), history_curve(res, "asr", "ca")
            print(f"{r}_s{s}: {wall:.0f}s ca={m.get('ca', float('nan')):.4f} asr={m.get('asr', float('nan')):.4f} "
                  "trace=" + " ".join(f"e{e}:{a:.3f}" for e, a in zip(trace["epochs"], trace["asr"]) if a is not None),
                  flush=True)
            det = man.get("details", {})
            setting.setdefault("target_in_pretraining", det.get("target_in_pretraining"))
            setting.setdefault("excluded_classes", det.get("excluded_classes"))
            setting.setdefault("trigger_size", trigger_size(man))
            per[r]["trace"].append(trace)
            per[r]["area"].append(trigger_area(man))
            per[r]["ca"].append(m.get("ca"))
            per[r]["asr"].append(m.get("asr"))
            per[r]["wall_s"].append(wall)
            per[r]["craft"].append(det.get("craft_images_per_s"))
            per[r]["n"].append(det.get("poison_count"))
    result: dict[str, Any] = {}
    for r in rows:
        result[r] = {"ca": stats(per[r]["ca"]), "asr": stats(per[r]["asr"]), "asr_trace": per[r]["trace"],
                     "wall_s": per[r]["wall_s"], "poisons": per[r]["n"],
                     "trigger_area_train": per[r]["area"][0] if per[r]["area"] else None,
                     "crafting_images_per_s": stats(per[r]["craft"]) if r != "clean" else None}
    t = setting.get("trigger_size")
    result["_meta"] = {"seeds": list(range(seeds)), "target_in_pretraining": setting.get("target_in_pretraining"),
                       "excluded_classes": setting.get("excluded_classes"),
                       "trigger_area_test": t * t / (32 * 32) if t else None}
    return result


def main() -> None:
    ap = comparison_parser(__doc__, seeds=3)
    ap.add_argument("--rows", default=",".join(corruptencoder_row_names()), help="comma-separated subset of the rows")
    args = ap.parse_args()
    rows = corruptencoder_rows(args.rows)  # an unknown row: one line and status 2, before anything trains
    out, work = start(args)
    spec, rest = corruptencoder_spec(rows, range(args.seeds), args.overrides)
    t0 = time.time()
    runs = run_comparison(spec, work, rest, args.summarise_only)
    manifests = {n: json.loads(p.read_text()) if (p := work / "cells" / n / "manifest.json").exists() else {}
                 for n in runs}
    result = summarise(runs, manifests, rows, args.seeds)
    ce = split_overrides(args.overrides, dict(load_preset(CORRUPTENCODER_PRESET)["attack"]["params"]))[0]
    result["_meta"].update(preset=CORRUPTENCODER_PRESET, attack_params=ce, overrides=args.overrides,
                           wall_s=round(time.time() - t0, 1), threads=args.threads)
    write_result(out, result, {r: {"ca": result[r]["ca"]["mean"], "asr": result[r]["asr"]["mean"]} for r in rows})


if __name__ == "__main__":
    script_main(main)
