"""Search for a CPU small preset of CorruptEncoder: ASR against epochs, per setting (issue 6).

Each *setting* is a named list of ``key=value`` overrides on top of ``corruptencoder-small``; for every setting it
trains the rows given by ``--rows`` (default: the clean control, SSL-Backdoor and CorruptEncoder at the same
budget, trigger and target — the rows are those of ``benchmarks/corruptencoder_small.py``) with
``eval.every_epochs`` set, so each run records linear-probe CA and ASR every k epochs. It writes ``--out`` (JSON:
setting → row → epochs / ca / asr lists, wall time) and one PNG per setting next to it (ASR against epochs).
Finished runs are kept under ``--work`` and reused.

    python benchmarks/corruptencoder_search.py --out benchmarks/results/corruptencoder_search.json \\
        --setting "r10_t12_b10:model.arch=resnet10 attack.params.poison_rate=0.1 train.epochs=100" --every 10
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corruptencoder_small import PRESET, row_config, setup, split_overrides  # noqa: E402

from clpoison.experiments.config import build_config, load_preset  # noqa: E402
from clpoison.experiments.runner import run_or_reuse  # noqa: E402
from clpoison.utils.io import atomic_write_json  # noqa: E402


def curve(res: dict) -> dict[str, list]:
    """(epochs, ca, asr) from the periodic evaluations plus the final one."""
    ep, ca, asr = [], [], []
    for h in res["history"]:
        if "eval_asr" in h:
            ep.append(h["epoch"])
            ca.append(h.get("eval_ca"))
            asr.append(h["eval_asr"])
    ep.append(res["history"][-1]["epoch"])
    ca.append(res["metrics"].get("ca"))
    asr.append(res["metrics"].get("asr"))
    return {"epochs": ep, "ca": ca, "asr": asr}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--setting", action="append", required=True,
                    help="NAME:key=value key=value ... (repeatable); attack.params.* apply to every row")
    ap.add_argument("--rows", default="clean,ssl_backdoor,corruptencoder")
    ap.add_argument("--every", type=int, default=10, help="evaluate every k epochs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out, work, rows = setup(args)
    base = dict(load_preset(PRESET)["attack"]["params"])
    result: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    for spec in args.setting:
        name, _, ov = spec.partition(":")
        ce, overrides = split_overrides(ov.split(), base)
        entry: dict[str, Any] = result.get(name) or {}
        if entry.get("overrides") != ov.split():  # a new or changed setting starts afresh; else rows accumulate
            entry = {"overrides": ov.split(), "rows": {}}
        for r in rows:
            run_dir = work / name / r
            cfg = build_config({**row_config(r, ce), "name": f"{name}-{r}"},
                               ["train.progress=false", f"seed={args.seed}", f"eval.every_epochs={args.every}",
                                *overrides])
            t0 = time.time()
            res, reused = run_or_reuse(cfg, run_dir)
            if not reused:
                print(f"{name}/{r}: {time.time() - t0:.0f}s", flush=True)
            c = curve(res)
            c["wall_s"] = res["timings"]["total_s"]
            c["pretrain_images_per_s"] = res["throughput"].get("pretrain_images_per_s")
            entry["rows"][r] = c
            print(f"{name}/{r}: " + " ".join(f"e{e}:{a:.3f}" for e, a in zip(c["epochs"], c["asr"])), flush=True)
        result[name] = entry
        atomic_write_json(out, result)
        plot(name, entry, out.with_name(f"{out.stem}_{name}.png"))
    print(json.dumps({k: {r: v["asr"][-1] for r, v in e["rows"].items()} for k, e in result.items()}, indent=2))


def plot(name: str, entry: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for r, c in entry["rows"].items():
        ax.plot(c["epochs"], c["asr"], "o-", ms=3, label=r)
    ax.set_xlabel("epoch")
    ax.set_ylabel("ASR (linear probe)")
    ax.set_ylim(0, max(0.3, max(max(c["asr"]) for c in entry["rows"].values()) + 0.05))
    ax.set_title(f"CorruptEncoder search: {name}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
