"""CorruptEncoder small benchmark: CA and ASR of six rows at one poison budget, over seeds.

Rows (JSON keys): ``clean`` (no poisons; the same trigger evaluated on the clean encoder), ``ssl_backdoor``,
``poisoned_encoder``, ``corruptencoder``, ``corruptencoder_plus``, ``corruptencoder_localized_cropping``
(CorruptEncoder poisons, localized-cropping defense) → ``{"ca", "asr"}`` each as mean, std and per-seed lists,
plus the wall time of every row and the crafting speed (poisoned images/s, from the manifests).
Everything else comes from the ``corruptencoder-small`` preset (target, budget, trigger, SimCLR recipe); extra
``key=value`` overrides apply to every run. Finished runs are kept under ``--work`` and reused on re-runs.

NOTE: ``corruptencoder-small`` is a mechanics preset; the CPU search (``benchmarks/corruptencoder_search.py``,
docs/corruptencoder.md) found no setting that shows the paper's ordering at 32 px.

    python benchmarks/corruptencoder_small.py --out runs/corruptencoder_small.json --seeds 3
    python benchmarks/corruptencoder_small.py --out /tmp/ce.json --seeds 1 train.epochs=1 data.train_limit=512   # smoke
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from clpoison.experiments.config import build_config, load_preset
from clpoison.experiments.runner import run_or_reuse
from clpoison.utils.io import atomic_write_json

PRESET = "corruptencoder-small"
ROWS = ("clean", "ssl_backdoor", "poisoned_encoder", "corruptencoder", "corruptencoder_plus",
        "corruptencoder_localized_cropping")
COMMON = ("target", "poison_rate", "poison_count", "trigger", "eval_seed", "zscore_images")


def row_config(row: str, ce: dict) -> dict:
    """The config mapping of one row, sharing the preset's target, budget and trigger."""
    common = {k: v for k, v in ce.items() if k in COMMON}
    if row == "clean":  # CorruptEncoder with zero poisons: clean data, same trigger evaluated
        attack = {"name": "corruptencoder", "params": {**ce, "poison_rate": None, "poison_count": 0}}
    elif row == "ssl_backdoor":
        attack = {"name": "ssl-backdoor", "params": common}
    elif row == "poisoned_encoder":
        attack = {"name": "poisoned-encoder", "params": {**common, "num_references": ce.get("num_references", 3)}}
    elif row == "corruptencoder_plus":
        attack = {"name": "corruptencoder-plus", "params": {**ce, "support_ratio": 0.2}}
    else:
        attack = {"name": "corruptencoder", "params": ce}
    data: dict[str, Any] = {"preset": PRESET, "attack": attack}
    if row == "corruptencoder_localized_cropping":
        data["defense"] = {"name": "localized-cropping", "params": {"delta": 0.2}}
    return data


def run(name: str, data: dict, overrides: list[str], work: Path) -> tuple[dict, dict, float]:
    out = work / name
    cfg = build_config({**data, "name": name}, ["train.progress=false", *overrides])
    res, _ = run_or_reuse(cfg, out)
    man = json.loads((out / "manifest.json").read_text()) if (out / "manifest.json").exists() else {}
    wall = res["timings"].get("total_s", float("nan"))
    m = res["metrics"]
    print(f"{name}: {wall:.0f}s ca={m.get('ca', float('nan')):.4f} asr={m.get('asr', float('nan')):.4f}", flush=True)
    return m, man, wall


def stats(xs: list) -> dict:
    xs = [float(x) for x in xs if x is not None]
    return {"mean": statistics.fmean(xs) if xs else float("nan"),
            "std": statistics.stdev(xs) if len(xs) > 1 else 0.0, "per_seed": xs}


def split_overrides(items: list[str], ce: dict) -> tuple[dict, list[str]]:
    """``attack.params.*`` overrides change the shared attack parameters of every row (a copy of ``ce``); the
    rest are returned as config overrides."""
    import yaml

    ce = json.loads(json.dumps(ce))
    rest = []
    for o in items:
        if o.startswith("attack.params."):
            key, raw = o[len("attack.params."):].split("=", 1)
            *path, last = key.split(".")
            node = ce
            for part in path:
                node = node.setdefault(part, {})
            node[last] = yaml.safe_load(raw)
        else:
            rest.append(o)
    return ce, rest


def setup(args: argparse.Namespace) -> tuple[Path, Path, list[str]]:
    """(out, work folder, rows) from the common arguments; unknown rows end the script with one error line."""
    out = Path(args.out)
    work = Path(args.work) if args.work else out.with_name(out.stem + "_runs")
    rows = [r for r in args.rows.split(",") if r]
    bad = sorted(set(rows) - set(ROWS))
    if bad:
        raise SystemExit(f"error: unknown rows {bad}; choose from {', '.join(ROWS)}")
    return out, work, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSON result file")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--work", default=None, help="run folders (default: OUT without suffix + '_runs')")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", default=",".join(ROWS), help="comma-separated subset of the rows")
    ap.add_argument("overrides", nargs="*", help="config overrides for every run, e.g. train.epochs=10")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out, work, rows = setup(args)
    ce, overrides = split_overrides(args.overrides, dict(load_preset(PRESET)["attack"]["params"]))
    t0 = time.time()
    per: dict[str, dict[str, list]] = {r: {"ca": [], "asr": [], "wall_s": [], "craft": [], "n": []} for r in rows}
    for s in range(args.seeds):
        for r in rows:
            m, man, wall = run(f"{r}_s{s}", row_config(r, ce), [f"seed={s}", *overrides], work)
            per[r]["ca"].append(m.get("ca"))
            per[r]["asr"].append(m.get("asr"))
            per[r]["wall_s"].append(wall)
            det = man.get("details", {})
            per[r]["craft"].append(det.get("craft_images_per_s"))
            per[r]["n"].append(det.get("poison_count"))
    result: dict[str, Any] = {}
    for r in rows:
        result[r] = {"ca": stats(per[r]["ca"]), "asr": stats(per[r]["asr"]), "wall_s": per[r]["wall_s"],
                     "poisons": per[r]["n"], "crafting_images_per_s": stats(per[r]["craft"]) if r != "clean" else None}
    result["_meta"] = {"preset": PRESET, "attack_params": ce, "seeds": list(range(args.seeds)), "overrides": args.overrides,
                       "wall_s": round(time.time() - t0, 1), "threads": args.threads,
                       "note": "corruptencoder-small is a mechanics preset; no CPU setting showed the paper's ordering (docs/corruptencoder.md)"}
    atomic_write_json(out, result)
    print(json.dumps({r: {"ca": result[r]["ca"]["mean"], "asr": result[r]["asr"]["mean"]} for r in rows}, indent=2))


if __name__ == "__main__":
    main()
