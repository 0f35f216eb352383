"""The audit benchmark: every ``clpoison scan`` score (CLIP similarity and the local-density detectors of
Detect-CLIP-Backdoor-Samples) on the Carlini patch backdoor of the bundled captions, with the model trained on the
poisoned data and with a clean reference model, plus a locally created Hugging Face CLIP run end to end.

* runs (one seed, ``--seed``): ``clean_s{S}`` (clip-small on the clean pairs: it never saw a poison, the clean
  reference) and ``backdoor_{RATE}_s{S}`` (carlini-backdoor-small at each ``--rates``: the poisoned models);
* each backdoor is exported (``clpoison poison``: same parameters and seed as its run, at the run's image size, so
  the export is exactly what that model trained on) and scanned (:func:`clpoison.experiments.scan.scan_data`) with
  every score of ``--scores``, once with the poisoned model and once with the clean reference;
* ``seconds_per_1000_pairs``: the time of each score alone on the 5 % export (embedding included), per 1,000 pairs;
* ``hf_local``: a small CLIP built with ``transformers.CLIPConfig`` and saved with ``save_pretrained`` (safetensors),
  scanned and compared with transformers' own embeddings (loading path only, not accuracy; skipped with a note
  when ``transformers`` is not installed).

Writes ``{"rates": {RATE: {"poisoned_model" | "clean_reference": {SCORE: {"roc_auc", "poisons_in_top_k"}}}},
"seconds_per_1000_pairs": {SCORE: s}, "hf_local": {"scan_ok", "max_abs_diff_vs_transformers"}, ...}``:

    python benchmarks/audit_small.py --out benchmarks/results/audit_small.json
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial
from pathlib import Path

import torch

from clpoison.attacks import ATTACKS
from clpoison.experiments.bench import run_named, work_dir
from clpoison.experiments.poison import export_attack
from clpoison.utils.io import dumps_json

ECHO = partial(print, flush=True)
SCORES = ("similarity", "kdist", "dao", "slof", "lid")


def export(params: dict, out: Path, seed: int, size: int) -> dict:
    """The backdoor export of exactly these params and seed (reused when its manifest says so)."""
    atk = ATTACKS.build("carlini-backdoor", params)
    man = out / "manifest.json"
    if man.exists():
        m = json.loads(man.read_text())
        if m.get("params") == json.loads(dumps_json(atk.params.to_dict())) and m.get("seed") == seed:
            return m
    return export_attack(atk, "cifar10-subset", out, seed, image_size=size, overwrite=True, progress=False)[1]


def train_and_export(args: argparse.Namespace, work: Path) -> tuple[Path, dict[str, tuple[Path, Path]]]:
    """(clean reference run dir, {rate: (poisoned run dir, export dir)})."""
    s = args.seed
    ov = [f"seed={s}", "eval.linear=false", "eval.random_init_control=false", *args.overrides]
    run_named(f"clean_s{s}", {"preset": "clip-small"}, ov, work, ECHO)
    out = {}
    for r in args.rates:
        name = f"backdoor_{r}_s{s}"
        res, _ = run_named(name, {"preset": "carlini-backdoor-small"}, [f"attack.params.poison_rate={r}", *ov], work,
                           ECHO)
        size = res["config"]["data"]["image_size"] or res["config"]["augment"]["out_size"]
        exp = work / f"export_{r}_s{s}"
        export(res["config"]["attack"]["params"], exp, s, size)
        out[str(r)] = (work / name, exp)
    return work / f"clean_s{s}", out


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--work", default=None, help="run folders (default: OUT without suffix + '_runs')")
    ap.add_argument("--rates", type=float, nargs="+", default=[0.01, 0.05])
    ap.add_argument("--scores", nargs="+", default=list(SCORES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train-only", action="store_true", help="train and export, then stop")
    ap.add_argument("overrides", nargs="*", help="config overrides for every run")
    return ap.parse_args()


def main() -> None:
    args = parse()
    torch.set_num_threads(args.threads)
    out, t0 = Path(args.out), time.time()
    work = work_dir(out, args.work)
    clean, runs = train_and_export(args, work)
    if args.train_only:
        return
    raise SystemExit("TODO")


if __name__ == "__main__":
    main()
