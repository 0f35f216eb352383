"""The web-caption protocol end to end: pretrain CLIP on (unlabelled) image–caption pairs, measure retrieval on the
caption test split and zero-shot / backdoor ASR / targeted success on a separate labelled evaluation set
(``eval.sets``), defend with SafeCLIP, and audit the poisoned data with ``clpoison scan`` — once with the model
trained on it and once with a reference model trained on a trusted subset of clean pairs.

    python benchmarks/captions_protocol.py --out benchmarks/results/captions_protocol.json            # bundled
    python benchmarks/captions_protocol.py --captions pairs.csv --test-captions test.csv \\
        --eval-set cifar10-subset --out my_protocol.json                                              # your data
    python benchmarks/captions_protocol.py --captions '../shared/data/webcaps/train-{000000..000003}.tar' \\
        --test-captions ../shared/data/webcaps/test-000000.tar --out webcaps_protocol.json           # webcaps

``--captions`` is a caption CSV/TSV, tar shards (or any caption source name; default ``cifar10-subset``: the
bundled CIFAR-10 subset with *generated* stand-in captions); training never reads labels (the arguments are those of
every CLIP benchmark: :mod:`_clip`, docs/webcaps.md). ``--eval-set`` is the labelled image set
(default ``cifar10-subset``: the bundled test split, 1,017 images). Runs (one seed, ``--seed``):

* ``clean`` (clip-small), ``backdoor_{RATE}`` (carlini-backdoor-small at each ``--rates``), ``targeted``
  (carlini-targeted-small: 16 victims from the labelled set), the SafeCLIP versions of the backdoor at
  ``--safeclip-rate`` and of targeted (safeclip-small's sections, as benchmarks/safeclip_small.py), and
  ``reference``: clip-small on a seeded trusted subset (``--reference-pairs``, default half) of the *clean* pairs;
* the clean model's ASR and targeted success come from ``clpoison evaluate``'s machinery
  (:func:`clpoison.experiments.run_eval.evaluate_run` with the poisoned runs' manifests): no extra training;
* the scan: the backdoor at ``--scan-rate`` is exported (``clpoison poison``, same parameters and seed as its run,
  at the run's image size, so the export is exactly what that model trained on) and scanned with the reference
  model (ranking) and with the trained model (:func:`clpoison.experiments.scan.scan_data`).

The runs are the grid ``benchmarks/grids/captions_protocol.yaml`` (with ``--captions``, ``--seed``, the rates and
``--safeclip`` applied; ``clpoison grid FILE --out WORK`` makes the bundled runs), in ``WORK/cells/NAME`` and reused
when finished. Without ``--reference-pairs`` the reference's size is half of the clean run's training pairs, which
only that run knows: the grid runs without the reference first, then once more with it (the finished cells reused).
The clean model's controls, the export (``WORK/export_backdoor_{RATE}_s{SEED}``) and the scans (``WORK/scan_*.csv``)
follow the runs; ``--summarise-only`` trains nothing (it still evaluates, exports and scans: none of them trains).

Writes OUT with exactly ``{"caption_set", "clean": {"zeroshot", "asr", "recall_at_5_i2t"}, "backdoor": {RATE: {"asr",
"zeroshot"}}, "targeted": {"success", "success_clean"}, "safeclip": {"asr", "targeted"}, "scan":
{"trained_model_auc", "reference_model_auc"}}`` and the details (random-init controls, scan summaries, times,
settings) to OUT with ``.details.json``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from clpoison.engine.checkpoint import read_checkpoint
from clpoison.experiments.grid import CELLS_DIR, read_grid
from clpoison.experiments.run_eval import evaluate_run
from clpoison.experiments.scan import scan_data
from clpoison.utils.io import atomic_write_json

from _clip import add_caption_args, caption_details, caption_sections, caption_set_name
from _harness import (GRIDS, comparison_parser, override_keys, reuse_or_export, run_comparison, script_main, start,
                      write_result)

GRID = GRIDS / "captions_protocol.yaml"
RATE = "attack.params.poison_rate"


def grid_spec(seed: int, rates: Sequence[float], safeclip_rate: float, scan_rate: float, captions: dict,
              reference_pairs: Optional[int], safeclip: Sequence[str] = ()) -> dict:
    """``benchmarks/grids/captions_protocol.yaml`` at ``seed`` on the caption set's config sections ``captions``: the
    backdoor at ``rates`` and ``scan_rate``, SafeCLIP's at ``safeclip_rate`` (both SafeCLIP cells with the
    ``safeclip`` overrides), the reference on ``reference_pairs`` clean pairs drawn with ``seed + 1`` (``None``:
    no reference cell)."""
    spec = read_grid(GRID)
    spec["axes"] = {**spec["axes"], "seed": [seed]}
    spec["base"] = captions
    extra = override_keys(safeclip)
    cells = []
    for c in spec["cells"]:
        name = c["name"]
        if RATE in (c.get("axes") or {}):
            c["axes"][RATE] = sorted(set(rates) | {scan_rate})
        elif name.startswith("backdoor_safeclip_"):
            c.update({"name": f"backdoor_safeclip_{safeclip_rate}_s{{seed}}", RATE: safeclip_rate, **extra})
        elif name.startswith("targeted_safeclip_"):
            c.update(extra)
        elif name.startswith("reference_"):
            if reference_pairs is None:
                continue
            c.update({"data.train_subset": reference_pairs, "data.subset_seed": seed + 1})
        cells.append(c)
    spec["cells"] = cells
    return spec


def export(params: dict, data: dict, out: Path, seed: int, size: int) -> dict:
    """The backdoor export of exactly these params and seed (reused when its manifest says so)."""
    caps = data.get("captions", {})
    return reuse_or_export("carlini-backdoor", params, data.get("path") or data["name"], out, seed, size,
                           label_column=caps.get("label_column"), test_path=caps.get("test_path"))


def audit(work: Path, runs: dict[str, dict], seed: int, first_rate: float, scan_rate: float, data: dict) -> dict:
    """The clean model against the poisoned runs' trigger and victims (evaluation only), and the scans of the
    exported backdoor at ``scan_rate``: ``{"clean_bd", "clean_tg", "scan", "scan_clean"}``."""
    cells = work / CELLS_DIR
    ck = cells / f"clean_s{seed}" / "checkpoint.pt"
    clean_bd = evaluate_run(ck, read_checkpoint(ck), [], str(cells / f"backdoor_{first_rate}_s{seed}" / "manifest.json"))
    clean_tg = evaluate_run(ck, read_checkpoint(ck), [], str(cells / f"targeted_s{seed}" / "manifest.json"))
    # the scan: the exported poisoned data, ranked by the reference model, with the trained model beside it
    bd_res, bd_dir = runs[f"backdoor_{scan_rate}_s{seed}"], cells / f"backdoor_{scan_rate}_s{seed}"
    size = bd_res["config"]["data"]["image_size"] or bd_res["config"]["augment"]["out_size"]
    exp_dir = work / f"export_backdoor_{scan_rate}_s{seed}"
    export(bd_res["config"]["attack"]["params"], data, exp_dir, seed, size)
    scan = scan_data(work / f"scan_backdoor_{scan_rate}_s{seed}.csv", str(exp_dir / "train.csv"),
                     checkpoint=str(bd_dir), reference=str(cells / f"reference_s{seed}"),
                     manifest=str(exp_dir / "manifest.json"))
    # the clean model (all clean pairs, never the poisons) as a stronger reference, for the docs
    scan_clean = scan_data(work / f"scan_backdoor_{scan_rate}_clean_ref_s{seed}.csv", str(exp_dir / "train.csv"),
                           reference=str(cells / f"clean_s{seed}"), manifest=str(exp_dir / "manifest.json"))
    return {"clean_bd": clean_bd["metrics"], "clean_tg": clean_tg["metrics"], "scan": scan, "scan_clean": scan_clean}


def summarise(runs: dict[str, dict], audited: dict, seed: int, rates: Sequence[float], safeclip_rate: float) -> dict:
    """The JSON (``caption_set`` aside) from ``{cell name: results.json}`` and :func:`audit`'s controls and scans."""
    s = seed

    def m(name: str, key: str) -> Any:
        return runs[f"{name}_s{s}"]["metrics"].get(key)

    clean_bd, clean_tg, scan = audited["clean_bd"], audited["clean_tg"], audited["scan"]
    return {
        "clean": {"zeroshot": m("clean", "zeroshot_top1"), "asr": clean_bd.get("asr"),
                  "recall_at_5_i2t": m("clean", "recall_at_5_i2t")},
        "backdoor": {str(r): {"asr": m(f"backdoor_{r}", "asr"), "zeroshot": m(f"backdoor_{r}", "zeroshot_top1")}
                     for r in rates},
        "targeted": {"success": m("targeted", "targeted_success_rate"),
                     "success_clean": clean_tg.get("targeted_success_rate")},
        "safeclip": {"asr": m(f"backdoor_safeclip_{safeclip_rate}", "asr"),
                     "targeted": m("targeted_safeclip", "targeted_success_rate")},
        "scan": {"trained_model_auc": scan.get("roc_auc_checkpoint"), "reference_model_auc": scan.get("roc_auc")},
    }


def details(runs: dict[str, dict], audited: dict, seed: int, safeclip_rate: float) -> dict:
    """The details file's measured part: random-init controls, scan summaries, successes, times."""
    clean, targeted = runs[f"clean_s{seed}"], runs[f"targeted_s{seed}"]
    sc_bd, sc_tg = runs[f"backdoor_safeclip_{safeclip_rate}_s{seed}"], runs[f"targeted_safeclip_s{seed}"]
    reference = runs[f"reference_s{seed}"]
    return {
        "clean_random_init": {k: v for k, v in clean["metrics"].items() if k.endswith("_random_init")},
        "clean_eval_sets": clean.get("eval_sets"), "skipped": clean.get("skipped"),
        "reference_zeroshot": reference["metrics"].get("zeroshot_top1"), "scan": audited["scan"],
        "scan_with_clean_model_as_reference": audited["scan_clean"],
        "targeted_successes": {"clip": targeted["metrics"].get("targeted_successes"),
                               "clean": audited["clean_tg"].get("targeted_successes"),
                               "safeclip": sc_tg["metrics"].get("targeted_successes")},
        "safeclip_zeroshot": sc_bd["metrics"].get("zeroshot_top1"),
        "pretrain_s": {k: r["timings"]["pretrain_s"] for k, r in (("clean", clean), ("targeted", targeted),
                                                                  ("safeclip_backdoor", sc_bd), ("reference", reference))},
    }


def parse() -> argparse.Namespace:
    ap = comparison_parser(__doc__, seeds=None)
    add_caption_args(ap)
    ap.add_argument("--rates", type=float, nargs="+", default=[0.01, 0.05])
    ap.add_argument("--safeclip-rate", type=float, default=None, help="default: the largest --rates")
    ap.add_argument("--scan-rate", type=float, default=None, help="default: the largest --rates")
    ap.add_argument("--reference-pairs", type=int, default=None, help="trusted subset size (default: half)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--safeclip", nargs="*", default=[], help="overrides for the SafeCLIP runs only, e.g. "
                    "defense.params.cap_from_gmm=true defense.params.cap_filter_ratio=0.85 (docs/safeclip.md)")
    return ap.parse_args()


def main() -> None:
    args = parse()
    out, work = start(args)
    t0 = time.time()
    s = args.seed
    sc_rate = args.safeclip_rate or max(args.rates)
    scan_rate = args.scan_rate or max(args.rates)
    common = caption_sections(args, always=True)
    if any(o.startswith(("data.train_limit", "data.train_subset", "data.train_per_class")) for o in args.overrides):
        print("note: the scan exports the whole caption file, so with a cut training set the trained model's scan "
              "is not of the data it saw (scan.trained_model_auc)", flush=True)

    def spec(n_ref: Optional[int]) -> dict:
        return grid_spec(s, args.rates, sc_rate, scan_rate, common, n_ref, args.safeclip)

    n_ref = args.reference_pairs or None
    if n_ref is None:  # half of the clean run's training pairs: the grid without the reference first
        first = run_comparison(spec(None), work, args.overrides, args.summarise_only)
        n_ref = first[f"clean_s{s}"]["data"]["train_pairs"] // 2
    runs = run_comparison(spec(n_ref), work, args.overrides, args.summarise_only)
    audited = audit(work, runs, s, min(args.rates), scan_rate, common["data"])
    result = {"caption_set": caption_set_name(args), **summarise(runs, audited, s, args.rates, sc_rate)}
    info = {
        **caption_details(args, common), "seed": s, "rates": args.rates,
        "safeclip_rate": sc_rate, "scan_rate": scan_rate, "reference_pairs": n_ref,
        "train_pairs": runs[f"clean_s{s}"]["data"]["train_pairs"], "overrides": args.overrides,
        "safeclip_overrides": args.safeclip, "wall_s": round(time.time() - t0, 1),
        **details(runs, audited, s, sc_rate)}
    atomic_write_json(out.with_suffix(".details.json"), info)
    write_result(out, result)


if __name__ == "__main__":
    script_main(main)
