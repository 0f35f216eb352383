"""Search for a CPU small preset of CorruptEncoder: ASR against epochs, per setting (issue 6).

Each *setting* is a named list of ``key=value`` overrides on top of ``corruptencoder-small``; for every setting it
trains the rows given by ``--rows`` (default: the clean control, SSL-Backdoor and CorruptEncoder at the same
budget, trigger and target — the rows are the cells of ``benchmarks/grids/corruptencoder_small.yaml``,
:func:`_rows.corruptencoder_config`; an unknown row ends the script with one
``error: ...`` line and status 2) with ``eval.every_epochs`` set, so each run records linear-probe CA and ASR
every k epochs. It writes ``--out`` (JSON: setting → row → epochs / ca / asr lists, wall time) and one PNG per
setting next to it (ASR against epochs).
Finished runs are kept under ``--work`` (``SETTING/ROW``) and reused.

    python benchmarks/corruptencoder_search.py --out benchmarks/results/corruptencoder_search.json \\
        --setting "r10_t12_b10:model.arch=resnet10 attack.params.poison_rate=0.1 train.epochs=100" --every 10
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from clpoison.experiments.runner import run_or_reuse
from clpoison.report.plots import curve_plot
from clpoison.report.tables import history_curve
from clpoison.utils.io import atomic_write_json

from _harness import add_run_args, script_main, start
from _rows import corruptencoder_config, corruptencoder_rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--setting", action="append", required=True,
                    help="NAME:key=value key=value ... (repeatable); attack.params.* apply to every row")
    ap.add_argument("--rows", default="clean,ssl_backdoor,corruptencoder")
    ap.add_argument("--every", type=int, default=10, help="evaluate every k epochs")
    add_run_args(ap)
    args = ap.parse_args()
    rows = corruptencoder_rows(args.rows)  # an unknown row: one line and status 2, before anything trains
    out, work = start(args)
    result: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    for spec in args.setting:
        name, _, ov = spec.partition(":")
        entry: dict[str, Any] = result.get(name) or {}
        if entry.get("overrides") != ov.split():  # a new or changed setting starts afresh; else rows accumulate
            entry = {"overrides": ov.split(), "rows": {}}
        for r in rows:
            # run folder NAME/ROW, config name NAME-ROW (so not bench.run_named's NAME for both)
            run_dir = work / name / r
            cfg = corruptencoder_config(r, f"{name}-{r}", [f"seed={args.seed}", f"eval.every_epochs={args.every}",
                                                          *ov.split()])
            t0 = time.time()
            res, reused = run_or_reuse(cfg, run_dir)
            if not reused:
                print(f"{name}/{r}: {time.time() - t0:.0f}s", flush=True)
            c = history_curve(res, "asr", "ca")  # epochs of the periodic evaluations (eval_asr) + the last one
            c["wall_s"] = res["timings"]["total_s"]
            c["pretrain_images_per_s"] = res["throughput"].get("pretrain_images_per_s")
            entry["rows"][r] = c
            print(f"{name}/{r}: " + " ".join(f"e{e}:{a:.3f}" for e, a in zip(c["epochs"], c["asr"])), flush=True)
        result[name] = entry
        atomic_write_json(out, result)
        plot(name, entry, out.with_name(f"{out.stem}_{name}.png"))
    print(json.dumps({k: {r: v["asr"][-1] for r, v in e["rows"].items()} for k, e in result.items()}, indent=2))


def plot(name: str, entry: dict, path: Path) -> None:
    """ASR against epochs, one line per row of the setting."""
    curve_plot(path, {r: (c["epochs"], c["asr"]) for r, c in entry["rows"].items()}, "epoch", "ASR (linear probe)",
               f"CorruptEncoder search: {name}",
               ylim=(0, max(0.3, max(max(c["asr"]) for c in entry["rows"].values()) + 0.05)), dpi=110)


if __name__ == "__main__":
    script_main(main)
