"""Feature-space check of image-SSL backdoor runs: does the trigger move test images towards the target class?

For each run folder (a finished image-SSL run with a ``manifest.json`` whose trigger is a patch), it embeds the
non-target test images with and without the run's trigger (the attack's evaluation positions, ``eval_seed``) and
reports the mean cosine to the centroid of the target class's training images — the withheld ones when the class
was kept out of pretraining (``data.exclude_classes``) — and to the centroid of the attack's reference images, each
minus the same for the untriggered images (``delta_cos_target``, ``delta_cos_references``). A backdoor moves
triggered images towards the target; a clean model gives ≈ 0. Lower variance than ASR, and independent of the probe.

    python benchmarks/backdoor_feature_shift.py --out benchmarks/results/corruptencoder_feature_shift.json \\
        runs/ce_small/clean_s0 runs/ce_small/ssl_backdoor_s0 runs/ce_small/corruptencoder_s0
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch
import torch.nn.functional as F

from clpoison.api import load_encoder
from clpoison.triggers import trigger_from_dict
from clpoison.data.augment import EvalTransform
from clpoison.eval.encoder_eval import feature_embedder
from clpoison.experiments.config import build_config
from clpoison.experiments.sources import load_image_source
from clpoison.utils.io import atomic_write_json


def shift(run: Path) -> dict:
    enc, spec = load_encoder(run)
    pp = spec["preprocessing"]
    embed = feature_embedder(enc, EvalTransform(pp["size"], pp["mean"], pp["std"]), torch.device("cpu"), 512)
    man = json.loads((run / "manifest.json").read_text())
    cfg = build_config(json.loads((run / "config.json").read_text()))
    d = cfg.data
    splits = load_image_source(d.name, d.path, cfg.seed, d.image_size, None, d.train_limit, d.test_limit,
                               d.downstream_fraction, d.exclude_classes)
    target = int(man["targets"]["target_index"])
    pool = splits.withheld if splits.withheld is not None and bool((splits.withheld.labels == target).any()) \
        else splits.train
    test = splits.test.images[splits.test.labels != target]
    g = torch.Generator().manual_seed(int(man["params"].get("eval_seed", 1234)))
    f_clean, f_trig = embed(test), embed(trigger_from_dict(man["trigger"]).apply(test, g))
    out = {"run": str(run), "attack": man["attack"], "test_images": len(test)}
    centroids = {"target": pool.images[pool.labels == target]}
    refs = [int(m.group(1)) for r in man["details"].get("reference_images", []) if (m := re.search(r"\[(\d+)\]", r))]
    if refs:
        src = splits.withheld if str(man["details"]["reference_images"][0]).startswith("withheld") else splits.train
        centroids["references"] = src.images[refs]
    for name, imgs in centroids.items():
        c = F.normalize(embed(imgs).mean(0), dim=0)
        out[f"cos_{name}_clean"] = float((f_clean @ c).mean())
        out[f"cos_{name}_triggered"] = float((f_trig @ c).mean())
        out[f"delta_cos_{name}"] = out[f"cos_{name}_triggered"] - out[f"cos_{name}_clean"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("runs", nargs="+", help="finished image-SSL run folders with a manifest.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = [shift(Path(r)) for r in args.runs]
    atomic_write_json(Path(args.out), {"runs": rows})
    for r in rows:
        print(f"{Path(r['run']).name}: " + " ".join(f"{k} {v:+.4f}" for k, v in r.items() if k.startswith("delta")))


if __name__ == "__main__":
    main()
