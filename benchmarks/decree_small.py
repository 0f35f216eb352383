"""DECREE trigger inversion (``clpoison inspect``) on backdoored and clean encoders: PL1-norm, verdict, suspected
target and time per encoder, and the ROC-AUC of the PL1-norm (a low PL1-norm flags a backdoor).

For every seed it trains (or reuses, under ``--work``):

* CLIP (``kind: clip``): the Carlini & Terzis backdoor at 1 % and 2 % (``carlini-backdoor-small`` with
  ``attack.params.poison_rate``) and the clean control (``clip-small``, the config of
  :func:`_rows.carlini_clean_control`); the image tower is inspected, and the inverted
  trigger pasted on the labelled test images names the zero-shot class it drives (the suspected target);
* image SSL (``kind: ssl``): SSL-Backdoor and its clean twin at the dose of ``docs/corruptencoder.md``
  (SimCLR, ResNet-10 width 16, τ 0.2, 9 % budget, 12-px patch, ``--ssl-epochs`` epochs; ``--ssl-seeds`` seeds).

Each inversion uses ``--shadow`` images of the bundled test split as the shadow set (no labels).

    python benchmarks/decree_small.py --out benchmarks/results/decree_small.json --seeds 2 --work runs/decree_small

``--cells NAME,...`` runs only those encoders and merges their rows into an existing ``--out`` (so each encoder
can be trained and inverted in its own turn of a shared CPU); finished runs and inversions are reused.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Optional

from clpoison.experiments.config import load_preset

from _harness import run_named, script_main, start
from _rows import carlini_clean_control, corruptencoder_config

RATES = (0.01, 0.02)
SSL_OVERRIDES = ["model.arch=resnet10", "method.params.temperature=0.2", "attack.params.poison_rate=0.09"]


def cells(seeds: int, ssl_seeds: int, ssl_epochs: int) -> list[dict[str, Any]]:
    """Every encoder of the benchmark: ``name``, ``kind``, ``backdoored``, ``seed``, ``data`` (config mapping),
    ``overrides`` and ``true_target``."""
    out: list[dict[str, Any]] = []
    target = load_preset("carlini-backdoor-small")["attack"]["params"]["target"]
    for s in range(seeds):
        out.append({"name": f"clip_clean_s{s}", "kind": "clip", "backdoored": False, "seed": s,
                    "data": carlini_clean_control(), "overrides": [f"seed={s}"], "true_target": None})
        for r in RATES:
            out.append({"name": f"clip_backdoor_{r}_s{s}", "kind": "clip", "backdoored": True, "seed": s,
                        "data": {"preset": "carlini-backdoor-small"},
                        "overrides": [f"seed={s}", f"attack.params.poison_rate={r}"], "true_target": target})
    for s in range(ssl_seeds):
        for row, bd in (("clean", False), ("ssl_backdoor", True)):
            # the CorruptEncoder benchmark's row (benchmarks/grids/corruptencoder_small.yaml) as a config mapping
            cfg = corruptencoder_config(row, f"ssl_{row}_s{s}", [f"seed={s}", f"train.epochs={ssl_epochs}",
                                                                 *SSL_OVERRIDES])
            out.append({"name": cfg.name, "kind": "ssl", "backdoored": bd, "seed": s, "data": cfg.to_dict(),
                        "overrides": [], "true_target": cfg.attack.params["target"] if bd else None})
    return out


def train(cell: dict[str, Any], work: Path) -> Path:
    """The cell's finished run folder (trained now or reused)."""
    run_named(cell["name"], cell["data"], cell["overrides"], work)
    return Path(work) / cell["name"]


def roc_auc(scores: list[float], positive: list[bool]) -> Optional[float]:
    """ROC-AUC of flagging ``positive`` by a *low* score (ties count one half); ``None`` without both classes."""
    pos = [s for s, p in zip(scores, positive) if p]
    neg = [s for s, p in zip(scores, positive) if not p]
    if not pos or not neg:
        return None
    return sum(1.0 if a < b else 0.5 if a == b else 0.0 for a in pos for b in neg) / (len(pos) * len(neg))


def inspect_cell(cell: dict[str, Any], run: Path, work: Path, shadow: int, params: dict) -> dict[str, Any]:
    """DECREE on the cell's encoder (``work/inspect/NAME``, redone only when missing) and its benchmark row."""
    from clpoison.experiments.inspect import inspect_encoder

    out = work / "inspect" / cell["name"]
    manifest = run / "manifest.json" if cell["backdoored"] and (run / "manifest.json").is_file() else None
    res_path = out / "inspect.json"
    res = json.loads(res_path.read_text()) if res_path.is_file() else None
    if res is None or res.get("params", {}).get("max_epochs") != params.get("max_epochs") \
            or res["data"]["shadow_images"] != shadow:
        t0 = time.time()
        res = inspect_encoder(run, "cifar10-subset", out, shadow_size=shadow, seed=cell["seed"], manifest=manifest,
                              params=params, overwrite=True, echo=lambda s: print(f"  {cell['name']}: {s}", flush=True))
        print(f"{cell['name']}: PL1 {res['pl1_norm']:.4f} in {time.time() - t0:.0f} s", flush=True)
    results = json.loads((run / "results.json").read_text())
    zs = res.get("zeroshot") or {}
    return {"name": cell["name"], "kind": cell["kind"], "backdoored": cell["backdoored"], "seed": cell["seed"],
            "pl1_norm": res["pl1_norm"], "found": res["found"], "flagged": res["backdoored"],
            "suspected_target": zs.get("suspected_target"), "triggered_share": zs.get("triggered_share"),
            "true_target": cell["true_target"], "seconds": res["seconds"], "epochs": res["epochs"],
            "stopped": res["stopped"], "asr": results["metrics"].get("asr"),
            "mask_mass_in_trigger_region": (res.get("manifest") or {}).get("mass_in_trigger_region"),
            "inspect": str(out)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSON result file")
    ap.add_argument("--seeds", type=int, default=2, help="seeds of the CLIP encoders")
    ap.add_argument("--ssl-seeds", type=int, default=None, help="seeds of the SSL pair (default: --seeds)")
    ap.add_argument("--ssl-epochs", type=int, default=40)
    ap.add_argument("--shadow", type=int, default=1000, help="shadow images per inversion")
    ap.add_argument("--max-epochs", type=int, default=1000, help="DECREE epochs at most (official 1000)")
    ap.add_argument("--kinds", default="clip,ssl", help="which encoders: clip, ssl or both")
    ap.add_argument("--cells", default=None, help="only these encoders (comma-separated names); their rows replace "
                                                  "those of the same name in an existing --out")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--work", default=None, help="run folders (default: OUT without suffix + '_runs')")
    args = ap.parse_args()
    out, work = start(args)
    kinds = set(args.kinds.split(","))
    todo = [c for c in cells(args.seeds, args.seeds if args.ssl_seeds is None else args.ssl_seeds, args.ssl_epochs)
            if c["kind"] in kinds and (args.cells is None or c["name"] in args.cells.split(","))]
    rows = []
    params = {"max_epochs": args.max_epochs}
    for cell in todo:
        rows.append(inspect_cell(cell, train(cell, work), work, args.shadow, params))
        write(out, rows, args)
    print(json.dumps({r["name"]: (round(r["pl1_norm"], 4), r["suspected_target"]) for r in rows}, indent=2))


def write(out: Path, rows: list[dict[str, Any]], args: Any) -> None:
    """``out`` with ``rows`` (and the rows of other encoders already there) and the ROC-AUCs over all of them."""
    from clpoison.utils.io import atomic_write_json

    new = {r["name"] for r in rows}
    old = json.loads(out.read_text())["encoders"] if out.is_file() and args.cells else []
    rows = [r for r in old if r["name"] not in new] + rows

    by_kind = {k: roc_auc([r["pl1_norm"] for r in rows if r["kind"] == k], [r["backdoored"] for r in rows
                                                                          if r["kind"] == k]) for k in ("clip", "ssl")}
    atomic_write_json(out, {"encoders": rows, "roc_auc": roc_auc([r["pl1_norm"] for r in rows],
                                                                 [r["backdoored"] for r in rows]),
                            "roc_auc_by_kind": by_kind, "shadow": args.shadow, "max_epochs": args.max_epochs,
                            "ssl_epochs": args.ssl_epochs})


if __name__ == "__main__":
    script_main(main)
