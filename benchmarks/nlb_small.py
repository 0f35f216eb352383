"""No-Label Backdoors small benchmark: does choosing the poisons from unlabelled features beat random choice?

For every seed: the attacker's clean encoder (one run of ``nlb-small``'s attacker spec, seed 1000 + s), the clean
victim (``simclr-small``; its linear probe gives the clean model's ASR with the same trigger for every possible
anchor), and one victim per selection rule (``--rows``: random, kmeans, con, conp, conn, target) trained on the
data poisoned by ``nlb-small``. Per row: TPR (share of the poisons with the anchor label), ASR against the anchor
label, CA (linear probe, clean test images), the clean model's ASR for that anchor, selection seconds.

    python benchmarks/nlb_small.py --out benchmarks/results/nlb_small.json --seeds 3
    python benchmarks/nlb_small.py --out /tmp/nlb.json --seeds 1 --rows random,con train.epochs=1 attack.params.attacker_epochs=1  # smoke

JSON: ``{"clean_asr", "clean_ca", "rows": {ROW: {"tpr", "asr", "ca", "clean_asr", "select_seconds"}}, "trigger",
"per_seed", "std", "_meta"}`` (means over seeds; ``clean_asr`` is the clean model's ASR for the ``target`` class).
Extra ``attack.params.*`` overrides change the attack, the rest every victim (the clean one included).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch

from clpoison.attacks import ATTACKS
from clpoison.errors import ConfigError
from clpoison.experiments.bench import (script_main, NLB_PRESET, NLB_ROWS, clean_asr_by_target, nlb_attacker_run, nlb_row,
                                        run_named, split_overrides, stats, work_dir)
from clpoison.experiments.config import load_preset
from clpoison.utils.io import atomic_write_json

KEYS = ("tpr", "asr", "ca", "clean_asr", "select_seconds")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSON result file")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--rows", default=",".join(NLB_ROWS))
    ap.add_argument("--work", default=None, help="run folders (default: OUT without suffix + '_runs')")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("overrides", nargs="*", help="attack.params.* for the attack; the rest for every victim")
    args = ap.parse_args()
    rows = [r for r in args.rows.split(",") if r]
    if set(rows) - set(NLB_ROWS):
        raise ConfigError(f"unknown rows {sorted(set(rows) - set(NLB_ROWS))}; choose from {', '.join(NLB_ROWS)}")
    torch.set_num_threads(args.threads)
    out = args.out
    work = work_dir(out, args.work)
    params, victim_ov = split_overrides(args.overrides, load_preset(NLB_PRESET)["attack"]["params"])
    atk = ATTACKS.build("nlb", params)
    target = None
    t0 = time.time()
    per: dict[str, dict[str, list]] = {r: {k: [] for k in KEYS} for r in rows}
    clean: dict[str, list] = {"asr": [], "ca": []}
    for s in range(args.seeds):
        encoder = nlb_attacker_run(params, s, work)
        run_named(f"clean_s{s}", {"preset": "simclr-small"}, [f"seed={s}", *victim_ov], work)
        by_class, ca = clean_asr_by_target(work / f"clean_s{s}", atk.trigger, atk.params.eval_seed)
        if target is None:
            names = json.loads((work / f"clean_s{s}" / "results.json").read_text())["data"]["classes"]
            target = names.index(params["target"]) if isinstance(params["target"], str) else int(params["target"])
        clean["asr"].append(by_class[target])
        clean["ca"].append(ca)
        for r in rows:
            row = nlb_row(r, params, s, encoder, victim_ov, work)
            row["clean_asr"] = by_class[row["anchor"]]
            for k in KEYS:
                per[r][k].append(row[k])
            print(f"seed {s} {r}: TPR {row['tpr']:.3f}, ASR {row['asr']:.4f} (clean model {row['clean_asr']:.4f}), "
                  f"CA {row['ca']:.4f}", flush=True)
    result: dict[str, Any] = {
        "clean_asr": stats(clean["asr"])["mean"], "clean_ca": stats(clean["ca"])["mean"],
        "rows": {r: {k: stats(v)["mean"] for k, v in per[r].items()} for r in rows},
        "trigger": atk.trigger.spec.to_dict(),
        "per_seed": {"clean": clean, "rows": per},
        "std": {"clean": {k: stats(v)["std"] for k, v in clean.items()},
                "rows": {r: {k: stats(v)["std"] for k, v in per[r].items()} for r in rows}},
        "_meta": {"seeds": list(range(args.seeds)), "overrides": args.overrides, "target_class": target,
                  "budget": params.get("poison_count") or f"rate {params.get('poison_rate')}",
                  "wall_s": round(time.time() - t0, 1), "threads": args.threads},
    }
    atomic_write_json(out, result)
    print(json.dumps({k: result[k] for k in ("clean_asr", "clean_ca", "rows")}, indent=2))


if __name__ == "__main__":
    script_main(main)
