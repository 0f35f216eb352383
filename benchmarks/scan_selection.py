"""How well ``clpoison scan`` ranks the patch-backdoor poisons of the bundled captions, by how the poisons were drawn.

One reference CLIP (``clip-small`` on the clean bundled pairs: it never saw a poison) scans two exports of the same
backdoor (``carlini-backdoor-small``, ``--rate`` of the pairs, seed ``--seed``) that differ only in
``selection``:

* ``random`` (the paper's draw): on a 10-class set about a tenth of the poisons land on images that already are the
  target (an airplane photo captioned "airplane": a correct pair by content, which no alignment score can flag);
* ``off-target``: no poison sits on a target image (what a random draw gives almost surely on CC3M).

Writes ``{"random": {"roc_auc", "poisons", "poisons_on_target_images", "roc_auc_without_those"},
"off_target": {"roc_auc", "poisons", "poisons_in_top_k"}, "reference_zeroshot", ...}``:

    python benchmarks/scan_selection.py --out benchmarks/results/scan_selection.json
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

from clpoison.attacks import ATTACKS
from clpoison.experiments.config import load_preset
from clpoison.experiments.poison import export_attack
from clpoison.experiments.scan import scan_data
from clpoison.utils.io import atomic_write_json

from _harness import run_named, work_dir

ECHO = partial(print, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--work", default=None, help="run folders (default: OUT without suffix + '_runs')")
    ap.add_argument("--rate", type=float, default=0.05)
    ap.add_argument("--target", default="airplane")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out, t0 = Path(args.out), time.time()
    work = work_dir(out, args.work)
    ref, _ = run_named("reference_clean", {"preset": "clip-small"},
                       [f"seed={args.seed}", "eval.linear=false", "eval.random_init_control=false"], work, ECHO)
    base = load_preset("carlini-backdoor-small")["attack"]["params"]
    result: dict = {"rate": args.rate, "target": args.target, "seed": args.seed,
                    "reference_zeroshot": ref["metrics"].get("zeroshot_top1")}
    for sel in ("random", "off-target"):
        params = {**base, "target": args.target, "poison_rate": args.rate, "poison_count": None, "selection": sel}
        exp = work / f"export_{sel}"
        export_attack(ATTACKS.build("carlini-backdoor", params), "cifar10-subset", exp, args.seed, overwrite=True,
                      progress=False)
        summary = scan_data(work / f"scan_{sel}.csv", str(exp / "train.csv"), reference=str(work / "reference_clean"),
                            manifest=str(exp / "manifest.json"))
        row = {k: summary[k] for k in ("roc_auc", "poisons", "poisons_in_top_k", "pairs")}
        rows = list(csv.DictReader((work / f"scan_{sel}.csv").open()))
        labels = {i: r["label"] for i, r in enumerate(csv.DictReader((exp / "train.csv").open(), delimiter="\t"))}
        on_target = {int(r["index"]) for r in rows if r["poison"] == "1" and labels[int(r["index"])] == args.target}
        row["poisons_on_target_images"] = len(on_target)
        if on_target:  # the same ranking with those pairs left out
            from sklearn.metrics import roc_auc_score

            keep = [r for r in rows if int(r["index"]) not in on_target]
            sims = np.array([float(r["similarity"]) for r in keep])
            row["roc_auc_without_those"] = float(roc_auc_score([int(r["poison"]) for r in keep], -sims))
        result[sel.replace("-", "_")] = row
        ECHO(f"{sel}: {json.dumps(row)}")
    result["wall_s"] = round(time.time() - t0, 1)
    atomic_write_json(out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
