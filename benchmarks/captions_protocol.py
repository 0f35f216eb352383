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

Writes OUT with exactly ``{"caption_set", "clean": {"zeroshot", "asr", "recall_at_5_i2t"}, "backdoor": {RATE: {"asr",
"zeroshot"}}, "targeted": {"success", "success_clean"}, "safeclip": {"asr", "targeted"}, "scan":
{"trained_model_auc", "reference_model_auc"}}`` and the details (random-init controls, scan summaries, times,
settings) to OUT with ``.details.json``. Finished runs under ``--work`` are reused when their config is unchanged.
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial
from pathlib import Path

import torch

from clpoison.engine.checkpoint import read_checkpoint
from clpoison.experiments.config import load_preset
from clpoison.experiments.run_eval import evaluate_run
from clpoison.experiments.scan import scan_data
from clpoison.utils.io import atomic_write_json

from _clip import add_caption_args, caption_details, caption_sections, caption_set_name
from _harness import reuse_or_export, run_named, work_dir

ECHO = partial(print, flush=True)


def export(params: dict, args: argparse.Namespace, data: dict, out: Path, seed: int, size: int) -> dict:
    """The backdoor export of exactly these params and seed (reused when its manifest says so)."""
    caps = data.get("captions", {})
    return reuse_or_export("carlini-backdoor", params, data.get("path") or data["name"], out, seed, size,
                           label_column=caps.get("label_column"), test_path=caps.get("test_path"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    add_caption_args(ap)
    ap.add_argument("--rates", type=float, nargs="+", default=[0.01, 0.05])
    ap.add_argument("--safeclip-rate", type=float, default=None, help="default: the largest --rates")
    ap.add_argument("--scan-rate", type=float, default=None, help="default: the largest --rates")
    ap.add_argument("--reference-pairs", type=int, default=None, help="trusted subset size (default: half)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--safeclip", nargs="*", default=[], help="overrides for the SafeCLIP runs only, e.g. "
                    "defense.params.cap_from_gmm=true defense.params.cap_filter_ratio=0.85 (docs/safeclip.md)")
    ap.add_argument("overrides", nargs="*", help="config overrides for every run, e.g. train.epochs=10")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    work = work_dir(out, args.work)
    t0 = time.time()
    s = args.seed
    sc_rate = args.safeclip_rate or max(args.rates)
    scan_rate = args.scan_rate or max(args.rates)
    common = caption_sections(args, always=True)
    data = common["data"]
    ov = [f"seed={s}", *args.overrides]
    if any(o.startswith(("data.train_limit", "data.train_subset", "data.train_per_class")) for o in args.overrides):
        print("note: the scan exports the whole caption file, so with a cut training set the trained model's scan "
              "is not of the data it saw (scan.trained_model_auc)", flush=True)
    safeclip = {k: v for k, v in load_preset("safeclip-small").items() if k not in ("name", "preset")}

    def run(name: str, preset: str, extra: list, sections: dict = {}) -> tuple[dict, Path]:
        res, _ = run_named(f"{name}_s{s}", {"preset": preset, **sections, **common}, [*extra, *ov], work, ECHO)
        return res, work / f"{name}_s{s}"

    clean, clean_dir = run("clean", "clip-small", [])
    backdoor = {r: run(f"backdoor_{r}", "carlini-backdoor-small", [f"attack.params.poison_rate={r}"]) for r in
                sorted(set(args.rates) | {scan_rate})}
    targeted, targeted_dir = run("targeted", "carlini-targeted-small", [])
    sc_bd, _ = run(f"backdoor_safeclip_{sc_rate}", "carlini-backdoor-small",
                   [f"attack.params.poison_rate={sc_rate}", *args.safeclip], safeclip)
    sc_tg, _ = run("targeted_safeclip", "carlini-targeted-small", list(args.safeclip), safeclip)
    n_train = clean["data"]["train_pairs"]
    n_ref = args.reference_pairs or n_train // 2
    reference, reference_dir = run("reference", "clip-small", [f"data.train_subset={n_ref}", f"data.subset_seed={s + 1}"])

    # the clean model against the poisoned runs' trigger and victims: evaluation only
    ck = clean_dir / "checkpoint.pt"
    first = min(args.rates)
    clean_bd = evaluate_run(ck, read_checkpoint(ck), [], str(backdoor[first][1] / "manifest.json"))["metrics"]
    clean_tg = evaluate_run(ck, read_checkpoint(ck), [], str(targeted_dir / "manifest.json"))["metrics"]

    # the scan: the exported poisoned data, ranked by the reference model, with the trained model beside it
    bd_res, bd_dir = backdoor[scan_rate]
    size = bd_res["config"]["data"]["image_size"] or bd_res["config"]["augment"]["out_size"]
    exp_dir = work / f"export_backdoor_{scan_rate}_s{s}"
    export(bd_res["config"]["attack"]["params"], args, data, exp_dir, s, size)
    scan = scan_data(work / f"scan_backdoor_{scan_rate}_s{s}.csv", str(exp_dir / "train.csv"), checkpoint=str(bd_dir),
                     reference=str(reference_dir), manifest=str(exp_dir / "manifest.json"))
    # the clean model (all clean pairs, never the poisons) as a stronger reference, for the docs
    scan_clean = scan_data(work / f"scan_backdoor_{scan_rate}_clean_ref_s{s}.csv", str(exp_dir / "train.csv"),
                           reference=str(clean_dir), manifest=str(exp_dir / "manifest.json"))

    def m(res: dict, key: str):
        return res["metrics"].get(key)

    result = {
        "caption_set": caption_set_name(args),
        "clean": {"zeroshot": m(clean, "zeroshot_top1"), "asr": clean_bd.get("asr"),
                  "recall_at_5_i2t": m(clean, "recall_at_5_i2t")},
        "backdoor": {str(r): {"asr": m(backdoor[r][0], "asr"), "zeroshot": m(backdoor[r][0], "zeroshot_top1")}
                     for r in args.rates},
        "targeted": {"success": m(targeted, "targeted_success_rate"),
                     "success_clean": clean_tg.get("targeted_success_rate")},
        "safeclip": {"asr": m(sc_bd, "asr"), "targeted": m(sc_tg, "targeted_success_rate")},
        "scan": {"trained_model_auc": scan.get("roc_auc_checkpoint"), "reference_model_auc": scan.get("roc_auc")},
    }
    details = {
        **caption_details(args, common), "seed": s, "rates": args.rates,
        "safeclip_rate": sc_rate, "scan_rate": scan_rate, "reference_pairs": n_ref, "train_pairs": n_train,
        "overrides": args.overrides, "safeclip_overrides": args.safeclip, "wall_s": round(time.time() - t0, 1),
        "clean_random_init": {k: v for k, v in clean["metrics"].items() if k.endswith("_random_init")},
        "clean_eval_sets": clean.get("eval_sets"), "skipped": clean.get("skipped"),
        "reference_zeroshot": m(reference, "zeroshot_top1"), "scan": scan,
        "scan_with_clean_model_as_reference": scan_clean,
        "targeted_successes": {"clip": m(targeted, "targeted_successes"), "clean": clean_tg.get("targeted_successes"),
                               "safeclip": m(sc_tg, "targeted_successes")},
        "safeclip_zeroshot": m(sc_bd, "zeroshot_top1"),
        "pretrain_s": {k: r["timings"]["pretrain_s"] for k, r in (("clean", clean), ("targeted", targeted),
                                                                  ("safeclip_backdoor", sc_bd), ("reference", reference))},
    }
    atomic_write_json(out, result)
    atomic_write_json(out.with_suffix(".details.json"), details)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
