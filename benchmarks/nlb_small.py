"""No-Label Backdoors small benchmark: at a dose where a patch backdoor exists, does choosing the poisons from
unlabelled features beat random choice?

``nlb-small`` (issue 27's recorded setting: 9 % budget, 12-px centre patch, ResNet-10 w16 SimCLR τ 0.2, 60 epochs,
attacker encoder = the victim's recipe for 60 epochs, ASR / kNN ASR / Δcos every 10 epochs). For every seed s:

* the attacker's encoder, **one run per seed** (``attacker_s{s}``, seed 1000 + s), passed to every selection row
  as ``attack.params.encoder`` (no row retrains it);
* the clean victim (``clean_s{s}``: ``nlb-small`` without the attack); its linear probe, kNN and bank give the clean
  model's ASR, kNN ASR and Δcos with the same trigger for **every** class, so each row is compared with the clean
  model at that row's own anchor;
* one victim per selection row (``{row}_s{s}``; ``--rows``, default ``clean,target,kmeans,con,random``; ``conp`` and
  ``conn`` on request).

Per row, per seed and as mean ± std over seeds: ``asr``, ``asr_minus_clean`` (ASR − the clean model's ASR for
the same anchor), ``asr_knn`` and ``asr_knn_minus_clean``, ``delta_cos`` and ``delta_cos_minus_clean``, ``tpr``
(the share of the poisons with the anchor label) and ``purity`` (the same number under the name the issue uses),
``ca``, the mismatched-patch control (``asr_mismatched``, ``delta_cos_mismatched``), ``anchor``; and each seed's
trace against epochs (``trace``: ``{"epochs", "asr", "asr_knn", "delta_cos", ...}``). ``summary`` holds the issue's
checks: the ``target`` row's ASR gain, and ``kmeans`` / ``con`` minus ``random`` in ASR and Δcos, per seed.

The script is parse arguments -> :func:`collect` (the runs, trained or reused) -> :func:`summarise` -> write the
JSON, on the shared harness (``_harness``: arguments, ``run_named``, ``--summarise-only``, ``write_result``; the
rows in ``_rows``). It is **not grid-backed**, and its runs stay in ``WORK/NAME`` (not ``WORK/cells/NAME``), because
every selection row consumes another run's output: its config names the attacker encoder's run folder,
``attack.params.encoder: WORK/attacker_s{s}``. A grid file cannot state that (a cell's values cannot refer to
another cell's folder, which depends on ``--out``; and the attacker's seed is 1000 + s, which a seed axis cannot
derive), and moving the runs to ``WORK/cells/`` would change that path in every row's config, so the recorded rows
would be trained again instead of reused. (Letting each row pretrain its own attacker, the attack's
``attacker_epochs``, would be a different config and the same 60 epochs again for every row.) Finished runs are
reused (``run_or_reuse``: the same config only) and an interrupted run resumes from its checkpoint;
``--summarise-only`` trains nothing and names the first run that is missing (the clean victim's per-class baseline
is still evaluated from its checkpoint). Extra ``attack.params.*`` overrides change the attack, the rest every
victim (the clean one included; ``data.*`` ones the attacker's encoder too).

    python benchmarks/nlb_small.py --out benchmarks/results/nlb_small.json --work runs/nlb_small --seeds 2
    python benchmarks/nlb_small.py --out /tmp/nlb.json --seeds 1 train.epochs=1 data.train_limit=300 \\
        data.test_limit=100 model.width=4 eval.knn_k=20 attack.params.attacker_epochs=1 \\
        attack.params.attacker.model.width=4 attack.params.poison_rate=null attack.params.poison_count=20  # smoke
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from clpoison.attacks import ATTACKS
from clpoison.errors import ConfigError
from clpoison.experiments.config import load_preset
from clpoison.report.tables import history_curve

from _harness import comparison_parser, script_main, split_overrides, start, stats, write_result
from _rows import NLB_PRESET, NLB_ROWS, clean_by_target, nlb_attacker_run, nlb_clean_run, nlb_row

ROWS = ("clean", *NLB_ROWS)
DEFAULT_ROWS = "clean,target,kmeans,con,random"
#: Per-seed values of a selection row (``anchor`` is a class index; the rest are floats).
KEYS = ("asr", "asr_minus_clean", "asr_knn", "asr_knn_minus_clean", "delta_cos", "delta_cos_minus_clean", "tpr",
        "purity", "ca", "clean_asr", "clean_asr_knn", "clean_delta_cos", "asr_mismatched", "delta_cos_mismatched",
        "asr_no_trigger", "knn_top1", "backdoor_zscore", "select_seconds")


def minus(a: Any, b: Any) -> Any:
    return None if a is None or b is None else a - b


def row_record(row: dict, base: dict) -> dict:
    """A selection row's per-seed values, with the clean model's at the row's anchor and the differences."""
    a = row["anchor"]
    clean = {k: (base.get(k) or [None] * (a + 1))[a] for k in ("asr", "asr_knn", "delta_cos")}
    return {**row, "purity": row["tpr"], "clean_asr": clean["asr"], "clean_asr_knn": clean["asr_knn"],
            "clean_delta_cos": clean["delta_cos"], "asr_minus_clean": minus(row["asr"], clean["asr"]),
            "asr_knn_minus_clean": minus(row["asr_knn"], clean["asr_knn"]),
            "delta_cos_minus_clean": minus(row["delta_cos"], clean["delta_cos"])}


def clean_record(run: Path, base: dict, target: int) -> dict:
    """The clean row: CA, and ASR / kNN ASR / Δcos at the preset's ``target`` class (each row carries its own
    anchor's), the per-class baselines and the clean run's kNN / linear trace."""
    res = json.loads((run / "results.json").read_text())
    return {"ca": base["ca"], "knn_top1": res["metrics"].get("knn_top1"), "target": target,
            **{k: (base.get(k) or [None] * (target + 1))[target] for k in ("asr", "asr_knn", "delta_cos")},
            "by_class": {k: base.get(k) for k in ("asr", "asr_knn", "delta_cos")},
            "trace": history_curve(res, "knn_top1", "linear_top1")}


def summary(per_seed: dict[str, dict[str, list]]) -> dict:
    """The issue's checks: the ``target`` row's ASR − clean (a backdoor exists at +0.10), and each label-free rule
    minus ``random`` in ASR − clean and in Δcos − clean (each at its own anchor), per seed."""
    out: dict[str, Any] = {}
    if "target" in per_seed:
        out["target_asr_minus_clean"] = per_seed["target"]["asr_minus_clean"]
    for r in ("kmeans", "con", "conp", "conn"):
        if r in per_seed and "random" in per_seed:
            for k in ("asr_minus_clean", "delta_cos_minus_clean"):
                out[f"{r}_minus_random_{k}"] = [minus(a, b) for a, b in zip(per_seed[r][k], per_seed["random"][k])]
    return out


def collect(params: dict, atk: Any, seeds: int, selection: list[str], overrides: list[str], work: Path,
            reuse_only: bool = False) -> list[dict]:
    """Per seed ``{"clean": clean_record, "rows": {row: row_record}}``: the attacker's encoder, the clean victim and
    one victim per selection row in ``work``, trained or reused (``reuse_only``: never train; one ConfigError line
    naming the first missing run)."""
    out = []
    for s in range(seeds):
        encoder = nlb_attacker_run(params, s, work, overrides, reuse_only)
        run = nlb_clean_run(s, overrides, work, reuse_only=reuse_only)
        base = clean_by_target(run, atk.trigger, atk.params.eval_seed)
        names = json.loads((run / "results.json").read_text())["data"]["classes"]
        target = names.index(params["target"]) if isinstance(params["target"], str) else int(params["target"])
        rec: dict[str, Any] = {"clean": clean_record(run, base, target), "rows": {}}
        for r in selection:
            row = rec["rows"][r] = row_record(nlb_row(r, params, s, encoder, overrides, work,
                                                      reuse_only=reuse_only), base)
            print(f"seed {s} {r}: anchor {names[row['anchor']]}, " + ", ".join(
                f"{k} {row[k]:.4f}" for k in ("tpr", "asr", "clean_asr", "asr_knn", "clean_asr_knn", "delta_cos",
                                              "clean_delta_cos", "ca") if isinstance(row.get(k), float)), flush=True)
        out.append(rec)
    return out


def summarise(per_seed: list[dict], rows: list[str]) -> dict:
    """``{"rows", "summary", "trace"}`` from :func:`collect`'s per-seed records: each row's values as mean ± std
    and per seed (``anchor`` per seed), the clean row's CA, kNN and ASR at the preset's target with its per-class
    baselines, the issue's checks and every row's trace per seed."""
    selection = [r for r in rows if r != "clean"]
    per = {r: {k: [rec["rows"][r].get(k) for rec in per_seed] for k in (*KEYS, "anchor")} for r in selection}
    out: dict[str, Any] = {r: {k: stats(v) for k, v in per[r].items() if k != "anchor"} for r in selection}
    for r in selection:
        out[r]["anchor"] = per[r]["anchor"]
    out["clean"] = {k: stats([rec["clean"][k] for rec in per_seed]) for k in ("ca", "knn_top1", "asr", "asr_knn",
                                                                                "delta_cos")}
    out["clean"]["by_class"] = [rec["clean"]["by_class"] for rec in per_seed]
    trace = {r: [rec["clean"]["trace"] if r == "clean" else rec["rows"][r]["trace"] for rec in per_seed]
             for r in rows}
    return {"rows": {r: out[r] for r in rows}, "summary": summary(per), "trace": trace}


def main() -> None:
    ap = comparison_parser(__doc__, seeds=2, work_help="the runs, WORK/NAME (not grid-backed: see the docstring)")
    ap.set_defaults(threads=1)
    ap.add_argument("--rows", default=DEFAULT_ROWS, help=f"comma-separated, from {', '.join(ROWS)}")
    args = ap.parse_args()
    rows = [r for r in args.rows.split(",") if r]
    if set(rows) - set(ROWS) or not rows:
        raise ConfigError(f"--rows: unknown rows {sorted(set(rows) - set(ROWS))}; choose from {', '.join(ROWS)}")
    if args.seeds < 1 or args.threads < 1:
        raise ConfigError("--seeds and --threads must be >= 1")
    out, work = start(args)
    params, victim_ov = split_overrides(args.overrides, load_preset(NLB_PRESET)["attack"]["params"])
    atk = ATTACKS.build("nlb", params)  # its trigger (defaults filled in) and eval seed: the rows' own
    t0 = time.time()
    per_seed = collect(params, atk, args.seeds, [r for r in rows if r != "clean"], victim_ov, work,
                       args.summarise_only)
    result = {**summarise(per_seed, rows), "trigger": atk.trigger.spec.to_dict(), "_meta": {
        "preset": NLB_PRESET, "seeds": list(range(args.seeds)), "seeds_done": args.seeds, "rows": rows,
        "overrides": args.overrides, "attack_params": params, "threads": args.threads,
        "budget": params.get("poison_count") or f"rate {params.get('poison_rate')}", "work": str(work),
        "wall_s": round(time.time() - t0, 1)}}
    write_result(out, result, {"summary": result["summary"], "asr_minus_clean": {
        r: result["rows"][r]["asr_minus_clean"]["mean"] for r in rows if r != "clean"}})


if __name__ == "__main__":
    script_main(main)
