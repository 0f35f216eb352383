"""The audit benchmark: every ``clpoison scan`` score (CLIP similarity and the local-density detectors of
Detect-CLIP-Backdoor-Samples) on the Carlini patch backdoor of the bundled captions, with the model trained on the
poisoned data and with a clean reference model, plus a locally created Hugging Face CLIP run end to end.

* runs (one seed, ``--seed``): ``clean_s{S}`` (clip-small on the clean pairs: it never saw a poison, the clean
  reference) and ``backdoor_{RATE}_s{S}`` (carlini-backdoor-small at each ``--rates``: the poisoned models);
* each backdoor is exported (``clpoison poison``: same parameters and seed as its run, at the run's image size, so
  the export is exactly what that model trained on) and scanned (:func:`clpoison.experiments.scan.scan_data`) with
  every score of ``--scores``, once with the poisoned model and once with the clean reference;
* every density score also in its two-sided version (``SCORE_two_sided``, e.g. ``kdist_two_sided``: distance from the
  median in either direction, a stated deviation from the official detector; :mod:`clpoison.eval.density`), from a
  second scan of the same models (``--directions high`` leaves it out);
* ``seconds_per_1000_pairs``: the time of each score alone on the 5 % export (embedding included), per 1,000 pairs;
* ``hf_local``: a small CLIP built with ``transformers.CLIPConfig`` and saved with ``save_pretrained`` (safetensors),
  scanned and compared with transformers' own embeddings (loading path only, not accuracy; skipped with a note
  when ``transformers`` is not installed).

Writes exactly ``{"rates": {RATE: {"poisoned_model" | "clean_reference": {SCORE: {"roc_auc", "poisons_in_top_k"}}}},
"seconds_per_1000_pairs": {SCORE: s}, "hf_local": {"scan_ok", "max_abs_diff_vs_transformers"}}`` to ``--out``
(SCORE: each of ``--scores``, then ``SCORE_two_sided`` of each density score)
and the rest (precision / recall, the in-batch neighbour rows of ``--neighbour-batch``, poison counts, notes) to
``OUT.details.json`` beside it, after every rate. Finished runs and exports are reused (same config / params and
seed), and so are finished scans and the ``hf_local`` check (``WORK/*.json``, keyed by the digests of the models'
``results.json`` and the export's manifest, and by the options), so a re-run computes only what changed. Timings
are measured afresh unless ``--keep-timings`` (then the existing OUT's are kept). ``--scores-only`` never trains or
exports: a run or export missing from ``--work`` (or of another config) stops it with one line. Adding the
two-sided columns to an earlier measurement, scores only::

    python benchmarks/audit_small.py --out benchmarks/results/audit_small.json --neighbour-batch 1024 \
        --work WORK --scores-only --keep-timings

Smoke check of the whole path (1 epoch, 512 training pairs; about a minute on 2 cores)::

    python benchmarks/audit_small.py --out /tmp/audit_smoke.json --poisoned-epochs 1 train.epochs=1 \
        data.train_limit=512
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from functools import partial
from pathlib import Path

import torch

from clpoison.eval.density import DENSITY_SCORES
from clpoison.experiments.scan import scan_data
from clpoison.utils.io import atomic_write_json

from _harness import reuse_or_export, run_named, work_dir

ECHO = partial(print, flush=True)
SCORES = ("similarity", "kdist", "dao", "slof", "lid")


def export(params: dict, out: Path, seed: int, size: int, reuse_only: bool = False) -> dict:
    """The backdoor export of exactly these params and seed (reused when its manifest says so)."""
    return reuse_or_export("carlini-backdoor", params, "cifar10-subset", out, seed, size, reuse_only)


def train_clean(args: argparse.Namespace, work: Path) -> Path:
    """The clean reference: clip-small on the clean pairs (never a poison)."""
    run_named(f"clean_s{args.seed}", {"preset": "clip-small"}, common(args), work, ECHO, args.scores_only)
    return work / f"clean_s{args.seed}"


def common(args: argparse.Namespace) -> list[str]:
    return [f"seed={args.seed}", "eval.linear=false", "eval.random_init_control=false", *args.overrides]


def train_and_export(args: argparse.Namespace, work: Path, r: float) -> tuple[Path, Path]:
    """(poisoned run dir, export dir) of the backdoor at rate ``r``."""
    s = args.seed
    ep = [f"train.epochs={args.poisoned_epochs}"] if args.poisoned_epochs else []
    name = f"backdoor_{r}" + (f"_e{args.poisoned_epochs}" if ep else "") + f"_s{s}"
    res, _ = run_named(name, {"preset": "carlini-backdoor-small"}, [f"attack.params.poison_rate={r}", *common(args),
                                                                    *ep], work, ECHO, args.scores_only)
    size = res["config"]["data"]["image_size"] or res["config"]["augment"]["out_size"]
    exp = work / f"export_{r}_s{s}"
    export(res["config"]["attack"]["params"], exp, s, size, args.scores_only)
    return work / name, exp


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16] if Path(path).is_file() else ""


def cached(where: Path, key: dict, compute):
    """``compute()``'s JSON result, reused from ``where`` when it was stored under the same ``key`` (the models'
    results and the export's manifest by digest, the scores and options), so a re-run only computes what changed."""
    if where.is_file():
        old = json.loads(where.read_text())
        if old.get("key") == key:
            return old["value"]
    value = compute()
    atomic_write_json(where, {"key": key, "value": value})
    return value


def scan_cached(work: Path, name: str, data: str, man: str, **kw) -> dict:
    """:func:`scan_data` of ``data`` against the manifest ``man`` (``kw``: checkpoint / reference / scores / k /
    neighbour_batch), cached in ``work/name.json`` beside its CSV."""
    models = {w: [kw[w], digest(Path(kw[w]) / "results.json")] for w in ("checkpoint", "reference") if kw.get(w)}
    key = {**{k: v for k, v in kw.items() if k not in models}, **models, "manifest": digest(Path(man))}
    return cached(work / f"{name}.json", key, lambda: scan_data(work / f"{name}.csv", data, manifest=man, **kw))


def scores_of(summary: dict, names: list[str]) -> dict:
    """``{score: roc_auc, poisons_in_top_k, precision, recall}`` of a scan summary (keys as its CSV columns)."""
    per = summary.get("scores") or {names[0]: summary}
    return {n: {"roc_auc": per[n]["roc_auc"], "poisons_in_top_k": per[n]["poisons_in_top_k"],
                "precision": per[n]["precision"], "recall": per[n]["recall"]} for n in names}


def scan_both(work: Path, name: str, data: str, man: str, names: list[str], dens: list[str], **kw) -> dict:
    """:func:`scores_of` the scan of ``names`` (official directions; cached under ``name``, as before the two-sided
    columns) and, when ``dens`` is not empty, of the scan of ``dens`` with ``direction="two-sided"`` (keys
    ``SCORE_two_sided``, cached under ``name_two_sided``); ``poisons`` and ``pairs`` of the first."""
    summ = scan_cached(work, name, data, man, scores=names, **kw)
    per = scores_of(summ, names)
    if dens:
        two = scan_cached(work, f"{name}_two_sided", data, man, scores=dens, direction="two-sided", **kw)
        per.update(scores_of(two, [f"{d}_two_sided" for d in dens]))
    return {"scores": per, "poisons": summ["poisons"], "pairs": summ["pairs"]}


def kept_timings(out: Path):
    """``(seconds_per_1000_pairs, timing details)`` of the existing OUT and its details, or None."""
    try:
        old, det = json.loads(out.read_text()), json.loads(details_path(out).read_text())
    except (OSError, ValueError):
        return None
    if not old.get("seconds_per_1000_pairs"):
        return None
    return old["seconds_per_1000_pairs"], {**det.get("timing", {}), "kept_from_earlier_run": True}


def time_scores(run: Path, data: str, names: list[str], k: int) -> tuple[dict, dict]:
    """Seconds per 1,000 pairs of each score as `clpoison scan` computes it: the image embeddings (and, for
    similarity, the caption embeddings) once, then each score alone; loading the model and data excluded."""
    from clpoison.data.captions.caption_loader import flat_captions
    from clpoison.eval.density import density_scores
    from clpoison.eval.zeroshot import encode_images, encode_texts
    from clpoison.experiments.scan import load_clip
    from clpoison.experiments.sources import load_scan_data

    _, cfg, method, task = load_clip(run)
    ds, _ = load_scan_data(data, None, cfg.data.image_size or cfg.augment.out_size, 0)
    texts = flat_captions(ds)
    owner = torch.repeat_interleave(torch.arange(len(ds)), torch.tensor([len(c) for c in ds.captions]))
    t = time.perf_counter()
    img = torch.nn.functional.normalize(encode_images(method.model, ds.images, task.transform(),
                                                      batch_size=cfg.eval.batch_size, device=task.device).float(), dim=1)
    t_img = time.perf_counter() - t
    t = time.perf_counter()
    txt = torch.nn.functional.normalize(encode_texts(method.model, method.tokenizer, texts, method.params.context_length,
                                                     device=task.device).float(), dim=1)
    t_txt = time.perf_counter() - t
    per: dict = {}
    for n in names:
        t = time.perf_counter()
        if n == "similarity":
            (img[owner] * txt).sum(1)
            per[n] = t_img + t_txt + time.perf_counter() - t
        else:
            density_scores(img, [n], k)
            per[n] = t_img + time.perf_counter() - t
    return ({n: s / len(texts) * 1000 for n, s in per.items()},
            {"pairs": len(texts), "embed_images_s": t_img, "embed_captions_s": t_txt})


def hf_local(work: Path, export_dir: Path, poisoned: Path) -> dict:
    """A tiny Hugging Face CLIP created here, scanned as the model and as --reference; its embeddings of the first
    64 exported pairs against transformers' own."""
    try:
        from clpoison.models.hf_clip import preprocessing, transformers_embeddings, write_tiny_hf_clip
    except ImportError as e:  # pragma: no cover
        return {"scan_ok": False, "note": str(e)}
    from clpoison.data.augment import EvalTransform
    from clpoison.errors import ConfigError
    from clpoison.experiments.scan import load_clip
    from clpoison.experiments.sources import load_scan_data

    try:
        d = write_tiny_hf_clip(work / "hf_local", image_size=32, patch=8,
                               words=["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                                      "truck", "photo"])
    except ConfigError as e:
        return {"scan_ok": False, "note": str(e)}
    man = str(export_dir / "manifest.json")
    data = str(export_dir / "train.csv")
    a = scan_data(work / "scan_hf_local.csv", data, checkpoint=str(d), manifest=man, scores=["similarity", "kdist"])
    b = scan_data(work / "scan_hf_local_ref.csv", data, checkpoint=str(poisoned), reference=str(d), manifest=man)
    ds, _ = load_scan_data(data, None, None, 0)
    caps = [c[0] for c in ds.captions[:64]]
    _, _, method, task = load_clip(d)
    pre = preprocessing(d)
    with torch.no_grad():
        img = method.model.encode_image(EvalTransform(pre["size"], pre["mean"], pre["std"])(ds.images[:64]))
        txt = method.model.encode_text(method.tokenizer.encode(caps, method.params.context_length))
    ri, rt = transformers_embeddings(d, ds.images[:64], caps)
    diff = max(float((img - ri).abs().max()), float((txt - rt).abs().max()))
    return {"scan_ok": a["pairs"] == b["pairs"] == len(ds.captions) and b["ranked_by"] == "reference",
            "max_abs_diff_vs_transformers": diff, "image_size": pre["size"], "pairs_compared": len(caps),
            "roc_auc_as_model": a["roc_auc"], "roc_auc_as_reference": b["roc_auc"]}


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--work", default=None, help="run folders (default: OUT without suffix + '_runs')")
    ap.add_argument("--rates", type=float, nargs="+", default=[0.05, 0.01])
    ap.add_argument("--scores", nargs="+", default=list(SCORES))
    ap.add_argument("--poisoned-epochs", type=int, default=None,
                    help="train the poisoned models this many epochs (default: the preset's 40)")
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--neighbour-batch", type=int, default=None, help="also score with in-batch neighbours of this size")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--directions", nargs="+", default=["high", "two-sided"], choices=["high", "two-sided"],
                    help="density score directions to report (high: the official scores, always computed; two-sided: "
                         "also the SCORE_two_sided columns)")
    ap.add_argument("--train-only", action="store_true", help="train and export, then stop")
    ap.add_argument("--scores-only", action="store_true",
                    help="never train or export: reuse --work's runs and exports (one line if one is missing)")
    ap.add_argument("--keep-timings", action="store_true",
                    help="keep seconds_per_1000_pairs of the existing OUT instead of timing again (a busy machine)")
    ap.add_argument("overrides", nargs="*", help="config overrides for every run")
    return ap.parse_args()


def details_path(out: Path) -> Path:
    """Where everything beyond the issue's keys goes: ``OUT`` with ``.details.json``."""
    return out.with_name(out.stem + ".details.json")


def main() -> None:
    args = parse()
    torch.set_num_threads(args.threads)
    out, t0 = Path(args.out), time.time()
    work = work_dir(out, args.work)
    clean = train_clean(args, work)
    if args.train_only:
        for r in args.rates:
            train_and_export(args, work, r)
        return
    names = list(args.scores)
    dens = [n for n in names if n in DENSITY_SCORES] if "two-sided" in args.directions else []
    # OUT holds exactly the keys; precision / recall, in-batch neighbours, counts and notes go beside it
    result: dict = {"rates": {}, "seconds_per_1000_pairs": {}, "hf_local": {}}
    details: dict = {"seed": args.seed, "k": args.k, "neighbours": "whole set", "poisons": {}, "rates": {},
                     "poisoned_epochs": args.poisoned_epochs or 40, "overrides": list(args.overrides)}
    for i, r in enumerate(args.rates):  # the first rate also gives the timings and the hf_local check
        run, exp = train_and_export(args, work, r)
        man, data = str(exp / "manifest.json"), str(exp / "train.csv")
        rate = str(r)
        result["rates"][rate], details["rates"][rate] = {}, {}
        for who, kw in (("poisoned_model", {"checkpoint": str(run)}), ("clean_reference", {"reference": str(clean)})):
            got = scan_both(work, f"scan_{r}_{who}", data, man, names, dens, k=args.k, **kw)
            per = got["scores"]
            result["rates"][rate][who] = {n: {"roc_auc": v["roc_auc"], "poisons_in_top_k": v["poisons_in_top_k"]}
                                          for n, v in per.items()}
            details["rates"][rate][who] = per
            ECHO(f"{r} {who}: " + json.dumps({n: round(v["roc_auc"], 3) for n, v in per.items()}))
            if args.neighbour_batch:  # the official in-batch neighbours, beside
                details.setdefault(f"rates_neighbour_batch_{args.neighbour_batch}", {}).setdefault(rate, {})[who] = \
                    scan_both(work, f"scan_{r}_{who}_batch", data, man, names, dens, k=args.k,
                              neighbour_batch=args.neighbour_batch, **kw)["scores"]
        details["poisons"][rate], details["pairs"] = got["poisons"], got["pairs"]
        if i == 0:
            kept = kept_timings(out) if args.keep_timings else None
            if kept:
                result["seconds_per_1000_pairs"], details["timing"] = kept
            else:
                result["seconds_per_1000_pairs"], details["timing"] = time_scores(run, data, names, args.k)
                details["timing"]["note"] = (f"the {r} export, poisoned model, {args.threads} threads, CPU: embedding "
                                             "(images; captions too for similarity) + the score, data loading excluded")
            hf = cached(work / "hf_local.json", {"run": digest(run / "results.json"), "manifest": digest(exp / "manifest.json")},
                        lambda: hf_local(work, exp, run))
            result["hf_local"] = {"scan_ok": bool(hf["scan_ok"]),
                                  "max_abs_diff_vs_transformers": hf.get("max_abs_diff_vs_transformers")}
            details["hf_local"] = hf
        details["wall_s"] = round(time.time() - t0, 1)
        atomic_write_json(out, result)  # after every rate: a partial result survives an interruption
        atomic_write_json(details_path(out), details)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
