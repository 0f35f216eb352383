"""Search for the No-Label Backdoors small preset's trigger, budget and schedule (issue 13): ASR per setting.

Each *setting* is ``NAME:key=value ...``: ``attack.params.*`` change the attack (on top of ``nlb-small``), the rest
the ``simclr-small`` victim (e.g. ``train.epochs=40``). For every setting and ``--rows`` (default ``target``, the
label-aware upper reference: if it shows no backdoor, nothing will) it trains the victims on seed ``--seed`` and
records TPR, ASR against the anchor label, CA (linear probe), and the clean model's ASR with the same trigger for the
same anchor (``clean_s{seed}``: ``nlb-small`` without the attack, with the victim overrides; settings recorded
before the preset moved to its ResNet-10 victim used simclr-small, which the preset then was). The attacker's encoder is one
run per seed (:func:`_rows.nlb_attacker_run`). Results accumulate in ``--out`` (setting → record).

    python benchmarks/nlb_search.py --out benchmarks/results/nlb_search.json \\
        --setting "checker3:" --setting "blend02:attack.params.trigger={pattern: gaussian, size: 32, location: top-left, opacity: 0.2}"
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from typing import Any

from clpoison.attacks import ATTACKS
from clpoison.errors import ConfigError
from clpoison.experiments.config import load_preset
from clpoison.utils.io import atomic_write_json

from _harness import add_run_args, script_main, split_overrides, start
from _rows import NLB_PRESET, NLB_ROWS, clean_by_target, nlb_attacker_run, nlb_clean_run, nlb_row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--setting", action="append", required=True, help="NAME:key=value ... (repeatable; shell quoting)")
    ap.add_argument("--rows", default="target", help=f"comma-separated, from {', '.join(NLB_ROWS)}")
    add_run_args(ap)
    args = ap.parse_args()
    rows = [r for r in args.rows.split(",") if r]
    if set(rows) - set(NLB_ROWS):
        raise ConfigError(f"unknown rows {sorted(set(rows) - set(NLB_ROWS))}; choose from {', '.join(NLB_ROWS)}")
    out, work = start(args)
    base = load_preset(NLB_PRESET)["attack"]["params"]
    result: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    for spec in args.setting:
        name, _, ov = spec.partition(":")
        params, victim_ov = split_overrides(shlex.split(ov), base)
        t0 = time.time()
        encoder = nlb_attacker_run(params, args.seed, work)
        clean_tag = "clean_s%d%s" % (args.seed, "_" + "_".join(o.replace("=", "") for o in victim_ov) if victim_ov else "")
        nlb_clean_run(args.seed, victim_ov, work, clean_tag)
        trig = ATTACKS.build("nlb", params).trigger  # the attack's own trigger (its defaults filled in)
        base = clean_by_target(work / clean_tag, trig, params.get("eval_seed", 1234))
        clean_by_class, clean_ca = base["asr"], base["ca"]
        rec: dict[str, Any] = {"overrides": shlex.split(ov), "seed": args.seed, "trigger": trig.spec.to_dict(),
                               "clean_ca": clean_ca, "clean_asr_by_class": clean_by_class, "rows": {}}
        for r in rows:
            row = nlb_row(r, params, args.seed, encoder, victim_ov, work, tag=f"{name}_")
            row["clean_asr"] = clean_by_class[row["anchor"]]
            rec["rows"][r] = row
            print(f"{name} {r}: TPR {row['tpr']:.3f}, ASR {row['asr']:.4f} (clean model {row['clean_asr']:.4f}), "
                  f"CA {row['ca']:.4f}", flush=True)
        rec["wall_s_this_call"] = round(time.time() - t0, 1)
        result[name] = rec
        atomic_write_json(out, result)


if __name__ == "__main__":
    script_main(main)
