"""CorruptEncoder small benchmark: CA and ASR of six rows at one poison budget, over seeds, in the paper's setting.

Rows (JSON keys): ``clean`` (no poisons; the same trigger evaluated on the clean encoder), ``ssl_backdoor``,
``poisoned_encoder``, ``corruptencoder``, ``corruptencoder_plus``, ``corruptencoder_localized_cropping``
(CorruptEncoder poisons, localized-cropping defense) → ``{"ca", "asr"}`` each as mean, std and per-seed lists,
``asr_trace`` (per seed: ``{"epochs", "asr", "ca"}`` from the periodic evaluations, ``eval.every_epochs``), the wall
time of every row and the crafting speed (poisoned images/s, from the manifests). ``_meta`` records the setting:
``target_in_pretraining`` and the excluded classes (from the manifests), and the trigger's area fraction in the
poisons at training time (mean over the added poisons of each row) and in a test image.
Everything else comes from the ``corruptencoder-small`` preset (target, budget, trigger, SimCLR recipe); extra
``key=value`` overrides apply to every run (``attack.params.*`` ones change the attack parameters shared by every
row). The row configs are :func:`clpoison.experiments.bench.corruptencoder_row_config`, shared with
``benchmarks/corruptencoder_search.py``; ``--rows`` picks a subset (an unknown row ends the script with one
``error: ...`` line and status 2). Finished runs are kept under ``--work`` and reused on re-runs.

The ``corruptencoder-small`` preset keeps the target class (airplane) out of pretraining, as the paper
(docs/corruptencoder.md); ``data.exclude_classes=[] attack.params.target_in_pretraining=null`` gives the
"target inside pretraining" ablation.

    python benchmarks/corruptencoder_small.py --out runs/corruptencoder_small.json --seeds 3
    python benchmarks/corruptencoder_small.py --out /tmp/ce.json --seeds 1 train.epochs=1 data.train_limit=512   # smoke
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Optional

import torch

from clpoison.errors import ConfigError
from clpoison.experiments.bench import (CORRUPTENCODER_PRESET, CORRUPTENCODER_ROWS, corruptencoder_row_config,
                                        corruptencoder_rows, run_named, split_overrides, stats, work_dir)
from clpoison.experiments.config import load_preset
from clpoison.report.tables import history_curve
from clpoison.utils.io import atomic_write_json


def run_row(name: str, data: dict, overrides: list[str], work: Path) -> tuple[dict, dict, float, dict]:
    """(metrics, poison manifest or {}, wall time, ASR/CA trace) of the named run, fresh or reused; prints its CA
    and ASR."""
    res, _ = run_named(name, data, overrides, work, echo=None)
    man_path = work / name / "manifest.json"
    man = json.loads(man_path.read_text()) if man_path.exists() else {}
    wall = res["timings"].get("total_s", float("nan"))
    m = res["metrics"]
    trace = history_curve(res, "asr", "ca")
    print(f"{name}: {wall:.0f}s ca={m.get('ca', float('nan')):.4f} asr={m.get('asr', float('nan')):.4f} trace="
          + " ".join(f"e{e}:{a:.3f}" for e, a in zip(trace["epochs"], trace["asr"]) if a is not None), flush=True)
    return m, man, wall, trace


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSON result file")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--work", default=None, help="run folders (default: OUT without suffix + '_runs')")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", default=",".join(CORRUPTENCODER_ROWS), help="comma-separated subset of the rows")
    ap.add_argument("overrides", nargs="*", help="config overrides for every run, e.g. train.epochs=10")
    args = ap.parse_args()
    try:
        rows = corruptencoder_rows(args.rows)
    except ConfigError as e:  # an unknown row: one line and status 2, as the clpoison CLI does
        ap.exit(2, f"error: {e}\n")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    work = work_dir(out, args.work)
    ce, overrides = split_overrides(args.overrides, dict(load_preset(CORRUPTENCODER_PRESET)["attack"]["params"]))
    t0 = time.time()
    per: dict[str, dict[str, list]] = {r: {"ca": [], "asr": [], "wall_s": [], "craft": [], "n": [], "trace": [],
                                           "area": []} for r in rows}
    setting: dict[str, Any] = {}
    for s in range(args.seeds):
        for r in rows:
            m, man, wall, trace = run_row(f"{r}_s{s}", corruptencoder_row_config(r, ce), [f"seed={s}", *overrides],
                                          work)
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
    result["_meta"] = {"preset": CORRUPTENCODER_PRESET, "attack_params": ce, "seeds": list(range(args.seeds)),
                       "overrides": args.overrides, "wall_s": round(time.time() - t0, 1), "threads": args.threads,
                       "target_in_pretraining": setting.get("target_in_pretraining"),
                       "excluded_classes": setting.get("excluded_classes"),
                       "trigger_area_test": t * t / (32 * 32) if t else None}
    atomic_write_json(out, result)
    print(json.dumps({r: {"ca": result[r]["ca"]["mean"], "asr": result[r]["asr"]["mean"]} for r in rows}, indent=2))


if __name__ == "__main__":
    main()
