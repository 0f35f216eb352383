"""No-Label Backdoors small benchmark: does choosing the poisons from unlabelled features beat random choice?

For every seed: the attacker's clean encoder (one run of ``nlb-small``'s attacker spec, seed 1000 + s) and the
TPR of every rule's selection from it (``--tpr-seeds``, no victim needed: the same features and selection the
attack makes); then, for ``--seeds`` seeds, the clean victim (``nlb-small`` without the attack; its linear probe gives the clean model's ASR with the same trigger for every possible
anchor), and one victim per selection rule (``--rows``: random, kmeans, con, conp, conn, target) trained on the
data poisoned by ``nlb-small``. Per row: TPR (share of the poisons with the anchor label), ASR against the anchor
label, CA (linear probe, clean test images), the clean model's ASR for that anchor, selection seconds.

    python benchmarks/nlb_small.py --out benchmarks/results/nlb_small.json --seeds 3
    python benchmarks/nlb_small.py --out /tmp/nlb.json --seeds 1 --rows random,con train.epochs=1 attack.params.attacker_epochs=1  # smoke

JSON: ``{"clean_asr", "clean_ca", "rows": {ROW: {"tpr", "asr", "ca", "clean_asr", "select_seconds"}}, "tpr": {ROW:
{"mean", "std", "per_seed"}}, "trigger", "per_seed", "std", "_meta"}`` (means over seeds; ``rows.*.tpr`` over the
``--tpr-seeds`` encoders, the rest over the victim seeds; ``clean_asr`` is the clean model's ASR for the ``target``
class).
Extra ``attack.params.*`` overrides change the attack, the rest every victim (the clean one included).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch

from clpoison.attacks import ATTACKS
from clpoison.attacks.attacker_features import attacker_features
from clpoison.attacks.poison_selection import nlb_budget, purity, select
from clpoison.data import load_dataset
from clpoison.errors import ConfigError
from clpoison.experiments.bench import (NLB_PRESET, NLB_ROWS, clean_asr_by_target, nlb_attacker_run, nlb_clean_run,
                                        nlb_row, script_main, split_overrides, stats, work_dir)
from clpoison.experiments.config import load_preset
from clpoison.utils.io import atomic_write_json

KEYS = ("asr", "ca", "clean_asr", "select_seconds")  # TPR: from the attacker seeds (`tpr`), one source


def selection_tpr(p: Any, rows: list[str], encoder: Any, train: Any, seed: int) -> dict[str, float]:
    """TPR of each rule's poison set chosen from the ``encoder`` run's features (what the attack would select)."""
    feats, _ = attacker_features(train.images, encoder=str(encoder))
    m = nlb_budget(p.poison_rate, p.poison_count, len(train), p.clusters)
    target = train.class_index(p.target) if p.target is not None else None
    return {r: purity(select(r, feats, m, seed=seed, n_clusters=p.clusters, labels=train.labels, target=target).indices,
                      train.labels)[1] for r in rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSON result file")
    ap.add_argument("--seeds", type=int, default=3, help="seeds of the victim runs")
    ap.add_argument("--tpr-seeds", type=int, default=3, help="seeds of the attacker encoders whose selections give TPR")
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
    tpr: dict[str, list] = {r: [] for r in rows}
    splits = load_dataset("cifar10-subset")
    for s in range(max(args.seeds, args.tpr_seeds)):
        encoder = nlb_attacker_run(params, s, work)
        if s < args.tpr_seeds:
            for r, v in selection_tpr(atk.params, rows, encoder, splits.train, s).items():
                tpr[r].append(v)
    for s in range(args.seeds):
        encoder = work / f"attacker_s{s}"
        nlb_clean_run(s, victim_ov, work)
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
        "rows": {r: {**{k: stats(v)["mean"] for k, v in per[r].items()}, "tpr": stats(tpr[r])["mean"]} for r in rows},
        "tpr": {r: stats(v) for r, v in tpr.items()},
        "trigger": atk.trigger.spec.to_dict(),
        "per_seed": {"clean": clean, "rows": per},
        "std": {"clean": {k: stats(v)["std"] for k, v in clean.items()},
                "rows": {r: {k: stats(v)["std"] for k, v in per[r].items()} for r in rows}},
        "_meta": {"seeds": list(range(args.seeds)), "tpr_seeds": list(range(args.tpr_seeds)), "overrides": args.overrides, "target_class": target,
                  "budget": params.get("poison_count") or f"rate {params.get('poison_rate')}",
                  "wall_s": round(time.time() - t0, 1), "threads": args.threads},
    }
    atomic_write_json(out, result)
    print(json.dumps({k: result[k] for k in ("clean_asr", "clean_ca", "rows")}, indent=2))


if __name__ == "__main__":
    script_main(main)
