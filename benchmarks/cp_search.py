"""Search for a CPU small preset of Contrastive Poisoning: victim accuracy per crafting setting (issue 12).

Each *setting* is ``NAME:key=value ...``: ``attack.params.*`` change the crafting (on top of ``--preset``, default
``cp-sample-small``), the rest the ``simclr-small`` victim. For every setting it crafts the poison once (exported
under ``--work``, reused on re-runs), trains the victim on it (``attack.name: precomputed``: the exported training split, evaluation on the clean
data) and records the victim's kNN / linear top-1, the
random-init encoder's, and the crafting record (per-round model-phase loss and noise-phase loss at the first and
last PGD step, |ε·δ|, wall time). Results accumulate in ``--out`` (JSON: setting → record).

    python benchmarks/cp_search.py --out benchmarks/results/cp_search.json \\
        --setting "s_r10:attack.params.rounds=10" --setting "c_r40:attack.params.rounds=40" --preset cp-class-small
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from clpoison.experiments.config import load_preset
from clpoison.experiments.poison import poison_or_reuse
from clpoison.utils.io import atomic_write_json

from _harness import add_run_args, run_named, split_overrides, start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--setting", action="append", required=True, help="NAME:key=value ... (repeatable)")
    ap.add_argument("--preset", default="cp-sample-small", help="the CP preset the settings change")
    add_run_args(ap)
    args = ap.parse_args()
    out, work = start(args)
    preset = load_preset(args.preset)
    result: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    for spec in args.setting:
        name, _, ov = spec.partition(":")
        params, victim_ov = split_overrides(ov.split(), preset["attack"]["params"])
        t0 = time.time()
        man = poison_or_reuse(preset["attack"]["name"], params, "cifar10-subset", work / f"{name}_data", args.seed, "cpu",
                              lambda s: print(f"{name}: {s}", flush=True))
        craft_wall = time.time() - t0
        cfg = {"preset": "simclr-small", "eval": {"random_init_linear": True},
               "attack": {"name": "precomputed", "params": {"path": str(work / f"{name}_data")}}}
        res, _ = run_named(f"{name}_victim", cfg, [f"seed={args.seed}", *victim_ov], work, lambda s: print(s, flush=True))
        d, m = man["details"], res["metrics"]
        result[name] = {
            "overrides": ov.split(), "attack": preset["attack"]["name"], "seed": args.seed,
            "victim": {k: m.get(k) for k in ("knn_top1", "linear_top1", "knn_top1_random_init", "linear_top1_random_init")},
            "craft_seconds": d["craft_seconds"], "craft_wall_s_this_call": round(craft_wall, 1),
            "noise_images_per_s": d["noise_images_per_s"], "max_abs_levels": d["max_abs_levels"],
            "rounds": [{k: h.get(k) for k in ("epoch", "loss", "noise_loss_first", "noise_loss_last", "delta_abs_mean")}
                       for h in d["history"]],
        }
        atomic_write_json(out, result)
        v = result[name]["victim"]
        print(f"{name}: linear {v['linear_top1']:.4f} (random init {v['linear_top1_random_init']:.4f}), "
              f"kNN {v['knn_top1']:.4f}; last round model loss {d['model_loss_last']:.3f}, noise loss "
              f"{d['noise_loss_first']:.3f} -> {d['noise_loss_last']:.3f}", flush=True)


if __name__ == "__main__":
    main()
