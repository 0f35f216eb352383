"""Contrastive Poisoning small benchmark: does CP make the SimCLR victim's linear probe fall back toward random init?

For every seed it crafts (once, exported like a released dataset, reused on re-runs, resumed if interrupted) CP-C
and CP-S with the ``cp-class-small`` / ``cp-sample-small`` presets, trains the ``simclr-small`` victim on: the clean
data, uniform ±ε noise and class-wise uniform noise of the poisons' ε (the controls), CP-C, CP-S, CP-S purified by
matrix completion and by JPEG; and reports kNN and linear top-1 on clean labelled data beside the random-init
encoder's, and the linear probe fitted on the poisoned training images (``linear_top1_poisoned_probe``; the clean
row's is its clean probe). CP-S starts from the CP-C row's export when that row is run (``init``), else from the
CP-C its preset crafts first. ``craft.trace`` holds the crafting traces (loss gap, sign consistency, mean |ε·δ|
per round). A crafting stopped by a gate (``attack.params.gate`` with ``action: abort``) is recorded in
``craft.gate_aborts`` with its trace read back from the crafting log, and its victims are skipped (nothing to read
the controls against). Crafting speed: noise-phase images/s and its ratio to the bare forward+backward of the
attacker's backbone on the same batch, timed interleaved. The momentum study (``--momentum-seeds``, default 0: at
the small budget BYOL's clean probe equals random init's, so the table cannot be read) crafts CP-S with each
attacker method and trains each victim's small preset on it.

    python benchmarks/cp_small.py --out benchmarks/results/cp_small.json --seeds 1 \
        'attack.params.gate=[{round: 30, max_gap: -0.1, action: abort}]'                # the recorded CPU run
    python benchmarks/cp_small.py --out /tmp/cp.json --seeds 1 attack.params.rounds=2 train.epochs=1  # smoke
    # GPU design (issue 26): paper attacker and victims, CP-C 100 rounds, CP-S 8 rounds from it, 80-epoch victims
    python benchmarks/cp_small.py --out $OUT/cp_gpu.json --seeds 1 --device cuda \
        --rows clean,random_noise,random_noise_class,cp_class,cp_sample --cp-class rounds=100 --cp-sample rounds=8 \
        attack.params.batch_size=512 attack.params.attacker.model.width=64 attack.params.attacker.model.stem_stride=1 \
        attack.params.attacker.train.lr=0.5 attack.params.attacker.train.weight_decay=1e-4 \
        'attack.params.gate=[{round: 40, max_gap: -0.1, action: abort}]' \
        model.width=64 model.stem_stride=1 train.epochs=80 train.batch_size=512

Positional ``attack.params.*`` overrides apply to both CP presets (``--cp-class`` / ``--cp-sample``: one of them),
the rest to every victim run; ``--craft-seed`` trains every victim seed on one crafted poison.

The script is parse arguments -> the crafted poisons and victim runs (:func:`crafts`, :func:`victim_rows`,
:func:`momentum_table`: made or reused) -> :func:`summarise` -> write the JSON, on the shared harness
(``_harness``). It is **not grid-backed**, and its runs stay in ``WORK/NAME``: the poisons are exports, not runs
(crafted once per seed, ``WORK/cp_class_data_s{s}``, shared by several victims and defenses), every poisoned victim's
config names its export's folder (``attack: precomputed, path: WORK/cp_..._data_s{s}``, a path that depends on
``--work``, which a grid file cannot state), CP-S starts from the CP-C export, and a crafting stopped by its gate
removes its victims. ``--summarise-only`` crafts and trains nothing: it reads the exports and the finished victims
(a crafting its gate stopped is read back from its log, ``WORK/.NAME.craft/crafting.jsonl``, with
``craft_seconds`` null) and names the first one missing; the crafting speed (``craft.noise_images_per_s``, ...) is
measured again, as on every run.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from clpoison.attacks import ATTACKS
from clpoison.attacks.cp.craft_diagnostic import CraftingNotBootstrapping, trace_from_log
from clpoison.attacks.cp.noise_crafting import PoisonedViews, PoisonNoise, noise_step
from clpoison.attacks.cp.random_noise import RandomNoiseParams
from clpoison.data.augment import TwoViewAugment
from clpoison.errors import ConfigError
from clpoison.experiments.config import load_preset
from clpoison.experiments.poison import craft_dir, poison_or_reuse
from clpoison.experiments.sources import load_source
from clpoison.utils.device import resolve_device
from clpoison.utils.timing import forever, interleaved

from _harness import comparison_parser, run_named, script_main, split_overrides, start, stats, write_result

ROWS = ("clean", "random_noise", "random_noise_class", "cp_class", "cp_sample", "cp_sample_matrix_completion", "cp_sample_jpeg")
METHODS = ("simclr", "mocov2", "byol")
METRICS = ("knn_top1", "linear_top1", "linear_top1_poisoned_probe")


def attack_params(preset: str, overrides: list[str], attacker_method: str = "simclr") -> dict:
    """The preset's attack params with the ``attack.params.*`` overrides; another attacker takes its method and
    augmentation from its own small preset."""
    params, _ = split_overrides(overrides, load_preset(preset)["attack"]["params"])
    if attacker_method != "simclr":
        small = load_preset(f"{attacker_method}-small")
        params["attacker"] = {**params["attacker"], "method": small["method"], "augment": small["augment"]}
    return params


def cp_sample_params(overrides: list[str], attacker_method: str, work: Path, seed: int) -> dict:
    """``cp-sample-small``'s params; a SimCLR CP-S starts from the CP-C row's export when there is one (not from a
    second crafting of the same CP-C); other attackers craft their own CP-C first (the preset's ``init``)."""
    params = attack_params("cp-sample-small", overrides, attacker_method)
    cpc = work / f"cp_class_data_s{seed}"
    if attacker_method == "simclr" and (cpc / "manifest.json").exists():
        params["init"] = str(cpc)
    return params


def gate_stop(out: Path) -> dict | None:
    """The gate abort of the crafting for ``out`` read back from its log (the stopping round's record has
    ``gate_passed: 0``) as :func:`crafted` records it (``craft_seconds`` unknown: null), or None."""
    log = craft_dir(out) / "crafting.jsonl"
    recs = [r for r in map(json.loads, log.read_text().splitlines() if log.exists() else [])
            if r.get("event") == "epoch" and "loss_gap" in r]
    if not recs or recs[-1].get("gate_passed") != 0:
        return None
    print(f"{out.name}: stopped by its gate at round {recs[-1]['epoch']} (read back from its log)", flush=True)
    return {"gate_abort": {"round": int(recs[-1]["epoch"]), "loss_gap": recs[-1]["loss_gap"]},
            "details": {"trace": trace_from_log(log), "craft_seconds": None}}


def crafted(name: str, params: dict, seed: int, out: Path, device: str = "auto", reuse_only: bool = False) -> dict:
    """The manifest of the poison exported to ``out`` (made once, reused on re-runs, resumed if interrupted); when a
    gate (``action: abort``) stops the crafting, ``{"gate_abort": {round, loss_gap}, "details": {"trace": ...}}``
    with the trace read back from the crafting's log (its victims are then skipped). ``reuse_only``: never craft
    (a stopped crafting is read back by :func:`gate_stop`; anything else missing is one ConfigError line)."""
    if reuse_only and not (out / "manifest.json").exists() and (stop := gate_stop(out)) is not None:
        return stop
    t0 = time.time()
    try:
        man = poison_or_reuse(name, params, "cifar10-subset", out, seed, device, lambda s: print(s, flush=True),
                              reuse_only=reuse_only)
    except CraftingNotBootstrapping as e:
        print(f"{out.name}: {e}", flush=True)
        log = craft_dir(out) / "crafting.jsonl"
        return {"gate_abort": {"round": e.round, "loss_gap": e.gap},
                "details": {"trace": trace_from_log(log), "craft_seconds": round(time.time() - t0, 1)}}
    if time.time() - t0 > 5:
        print(f"crafted {out.name}: {time.time() - t0:.0f}s", flush=True)
    return man


def victim(name: str, preset: str, data: Path | None, overrides: list[str], work: Path, defense: dict | None = None,
           attack: dict | None = None, reuse_only: bool = False) -> dict:
    cfg: dict[str, Any] = {"preset": preset, "eval": {"random_init_linear": True}}
    if data is not None:  # the exported poison as the training split; the probe is fitted on clean data
        cfg["attack"] = {"name": "precomputed", "params": {"path": str(data)}}
    if defense:
        cfg["defense"] = defense
    if attack:
        cfg["attack"] = attack
    return run_named(name, cfg, overrides, work, lambda s: print(s, flush=True), reuse_only)[0]["metrics"]


def craft_speed(params: dict, seed: int, device: torch.device) -> dict:
    """Noise-phase step vs the bare forward+backward of the attacker's backbone on the same views (interleaved)."""
    torch.manual_seed(seed)
    attack = ATTACKS.build("cp-sample", params)
    sur, s = attack.params.surrogate, attack.params.settings()
    splits = load_source("image", "cifar10-subset", seed=seed)
    method = sur.build_method().eval().to(device)
    noise = PoisonNoise(len(splits.train), tuple(splits.train.images.shape[1:]), s.epsilon, None,
                        torch.Generator().manual_seed(seed)).to(device)
    augment = TwoViewAugment(sur.augment_config()).to(device)
    batches = PoisonedViews(splits.train.images.to(device), noise, augment, s.batch_size, 1, seed)
    one = replace(s, pgd_steps=1)
    idx = torch.arange(s.batch_size, device=device)
    x = torch.randn(2 * s.batch_size, 3, 32, 32, device=device)
    bb = method.backbone.train()

    def bare(_):
        bb(x).float().pow(2).mean().backward()
        bb.zero_grad(set_to_none=True)

    sec = interleaved({"noise": (lambda _: noise_step(method, noise, batches, idx, one), forever()),
                       "bare": (bare, forever())}, rounds=5, steps=3, device=device if device.type == "cuda" else None)
    return {"noise_images_per_s": s.batch_size / sec["noise"], "bare_images_per_s": s.batch_size / sec["bare"],
            "ratio_to_bare": sec["bare"] / sec["noise"], "device": str(device)}


def new_record(rows: list[str]) -> dict:
    """The per-seed lists that :func:`crafts` and :func:`victim_rows` fill and :func:`summarise` reads."""
    return {"per": {r: {m: [] for m in METRICS} for r in rows}, "rand": {m: [] for m in METRICS},
            "craft": {"cp_class_s": [], "cp_sample_s": [], "noise_images_per_s": []},
            "traces": {"cp_class": [], "cp_sample": []}, "gate_aborts": {"cp_class": [], "cp_sample": []}}


def crafts(rows: list[str], cs: int, work: Path, atk_over: list[str], only: dict, device: str, rec: dict,
           reuse_only: bool = False) -> tuple[dict, dict]:
    """``(exports, aborted)``: CP-C and CP-S of crafting seed ``cs`` for the rows that need them, crafted or reused
    (their times, traces and gate aborts go into ``rec``); a CP-S after a stopped CP-C is not crafted."""
    data: dict[str, Path] = {}
    aborted: dict[str, dict] = {}
    for key, name, preset in (("cp_class", "cp-class", "cp-class-small"), ("cp_sample", "cp-sample", "cp-sample-small")):
        if key in rows or (key == "cp_sample" and any(r.startswith("cp_sample") for r in rows)):
            data[key] = work / f"{key}_data_s{cs}"
            params = (cp_sample_params(atk_over + only[key], "simclr", work, cs) if key == "cp_sample"
                      else attack_params(preset, atk_over + only[key]))
            if key == "cp_sample" and "cp_class" in aborted:
                aborted[key] = {"after": "cp_class"}  # CP-S would start from a CP-C that did not bootstrap
                continue
            man = crafted(name, params, cs, data[key], device, reuse_only)
            rec["craft"][f"{key}_s"].append(man["details"]["craft_seconds"])
            rec["traces"][key].append(man["details"].get("trace"))
            if "gate_abort" in man:
                aborted[key] = man["gate_abort"]
                rec["gate_aborts"][key].append({"seed": cs, **man["gate_abort"]})
            elif key == "cp_sample":
                rec["craft"]["noise_images_per_s"].append(man["details"]["noise_images_per_s"])
    return data, aborted


def victim_rows(rows: list[str], s: int, data: dict, aborted: dict, overrides: list[str], work: Path,
                atk_over: list[str], rec: dict, reuse_only: bool = False) -> None:
    """Train (or reuse) seed ``s``'s victim of every row whose poison was not stopped; metrics into ``rec``."""
    eps = attack_params("cp-class-small", atk_over)["epsilon"]  # the controls take the poisons' budget
    noise = {} if eps == RandomNoiseParams.epsilon else {"epsilon": eps}  # (the default: same run folders as before)
    runs = {"clean": ("simclr-small", None, None, None),
            "random_noise": ("simclr-small", None, None, {"name": "random-noise", "params": noise}),
            "random_noise_class": ("simclr-small", None, None,
                                   {"name": "random-noise", "params": {**noise, "classwise": True}}),
            "cp_class": ("simclr-small", data.get("cp_class"), None, None),
            "cp_sample": ("simclr-small", data.get("cp_sample"), None, None),
            "cp_sample_matrix_completion": ("simclr-small", data.get("cp_sample"), {"name": "matrix-completion"}, None),
            "cp_sample_jpeg": ("simclr-small", data.get("cp_sample"), {"name": "jpeg"}, None)}
    live = [r for r in rows if not any(r.startswith(k) for k in aborted)]  # no victims of a stopped poison
    if aborted and not any(r.startswith("cp_") for r in live):
        live = []  # no poison left to read the controls against: the trace is the result
    for r in live:
        preset, d, defense, attack = runs[r]
        m = victim(f"{r}_s{s}", preset, d, overrides, work, defense, attack, reuse_only)
        for k in METRICS:
            rec["per"][r][k].append(m.get(k) if (r, k) != ("clean", "linear_top1_poisoned_probe") else m.get("linear_top1"))
        if r == "clean":
            for k in METRICS:
                rec["rand"][k].append(m.get(f"{k}_random_init"))


def momentum_table(seeds: int, run_over: list[str], atk_over: list[str], only: dict, work: Path, device: str,
                   reuse_only: bool = False) -> dict:
    """``{attacker: {victim: [linear top-1 per seed]}}``: CP-S crafted with each attacker method, each victim's small
    preset trained on it (``none``: on clean data)."""
    momentum: dict[str, dict[str, list]] = {a: {v: [] for v in METHODS} for a in ("none", *METHODS)}
    for s in range(seeds):
        for v in METHODS:  # each victim on clean data: the reference of its column
            name = f"momentum_none_to_{v}_s{s}" if v != "simclr" else f"clean_s{s}"
            momentum["none"][v].append(victim(name, f"{v}-small", None, [f"seed={s}", *run_over], work,
                                              reuse_only=reuse_only).get("linear_top1"))
        for a in METHODS:
            d = work / f"cp_sample_{a}_data_s{s}" if a != "simclr" else work / f"cp_sample_data_s{s}"
            crafted("cp-sample", cp_sample_params(atk_over + only["cp_sample"], a, work, s), s, d, device, reuse_only)
            for v in METHODS:
                name = f"momentum_{a}_to_{v}_s{s}" if (a, v) != ("simclr", "simclr") else f"cp_sample_s{s}"
                momentum[a][v].append(victim(name, f"{v}-small", d, [f"seed={s}", *run_over], work,
                                             reuse_only=reuse_only).get("linear_top1"))
    return momentum


def summarise(rec: dict, rows: list[str], momentum: dict, speed: dict) -> dict:
    """The JSON (without ``_meta``) from the per-seed lists, the momentum table and the crafting speed: means,
    stds, the crafting times, traces and gate aborts, and every per-seed list."""
    per, craft = rec["per"], rec["craft"]
    secs = {k: [x for x in craft[k] if x is not None] for k in ("cp_sample_s", "cp_class_s")}  # None: read back
    return {
        "random_init": {k: stats(v)["mean"] for k, v in rec["rand"].items() if v},
        "rows": {r: {k: stats(v)["mean"] for k, v in per[r].items()} for r in rows if any(per[r].values())},
        "momentum": {a: {v: stats(x)["mean"] for v, x in vs.items()} for a, vs in momentum.items()},
        "craft": {"seconds": stats(secs["cp_sample_s"])["mean"] if secs["cp_sample_s"] else None,
                  "cp_class_seconds": stats(secs["cp_class_s"])["mean"] if secs["cp_class_s"] else None,
                  **speed, "trace": rec["traces"], "gate_aborts": rec["gate_aborts"]},
        "per_seed": {"random_init": rec["rand"], "rows": per, "momentum": momentum, "craft": craft},
        "std": {r: {k: stats(v)["std"] for k, v in per[r].items()} for r in rows if any(per[r].values())},
    }


def main() -> None:
    ap = comparison_parser(__doc__, seeds=3, work_help="the exports and runs, WORK/NAME (not grid-backed: see the "
                                                       "docstring)")
    ap.add_argument("--momentum-seeds", type=int, default=0,
                    help="seeds of the attacker x victim table (default 0: at the small budget BYOL's clean probe "
                         "equals random init's, so the table cannot be read; docs/contrastive_poisoning.md)")
    ap.add_argument("--craft-seed", type=int, default=None,
                    help="craft the poisons once with this seed and train every victim seed on them (one released "
                         "dataset, victims over seeds); default: each seed crafts its own")
    ap.add_argument("--device", default="auto", help="crafting, victims and the speed check (auto: cuda if present)")
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--cp-class", action="append", default=[], metavar="KEY=VALUE",
                    help="one attack.params override of CP-C only, e.g. rounds=100 (repeatable; the positional "
                         "attack.params.* apply to both)")
    ap.add_argument("--cp-sample", action="append", default=[], metavar="KEY=VALUE",
                    help="one attack.params override of CP-S only (repeatable)")
    args = ap.parse_args()
    rows = [r for r in args.rows.split(",") if r]
    if set(rows) - set(ROWS):
        raise ConfigError(f"unknown rows {sorted(set(rows) - set(ROWS))}; choose from {', '.join(ROWS)}")
    out, work = start(args)
    atk_over = [o for o in args.overrides if o.startswith("attack.params.")]
    only = {"cp_class": [f"attack.params.{o}" for o in args.cp_class], "cp_sample": [f"attack.params.{o}" for o in args.cp_sample]}
    run_over = [f"device={args.device}", *(o for o in args.overrides if not o.startswith("attack.params."))]
    reuse = args.summarise_only
    t0 = time.time()
    rec = new_record(rows)
    for s in range(args.seeds):
        cs = s if args.craft_seed is None else args.craft_seed
        data, aborted = crafts(rows, cs, work, atk_over, only, args.device, rec, reuse)
        victim_rows(rows, s, data, aborted, [f"seed={s}", *run_over], work, atk_over, rec, reuse)
    momentum = momentum_table(args.momentum_seeds, run_over, atk_over, only, work, args.device, reuse)
    speed = craft_speed(attack_params("cp-sample-small", atk_over + only["cp_sample"]), 0, resolve_device(args.device))
    result = {**summarise(rec, rows, momentum, speed), "_meta": {
        "seeds": list(range(args.seeds)), "momentum_seeds": list(range(args.momentum_seeds)),
        "overrides": args.overrides, "cp_class": args.cp_class, "cp_sample": args.cp_sample, "device": args.device,
        "craft_seed": args.craft_seed, "wall_s": round(time.time() - t0, 1), "threads": args.threads}}
    write_result(out, result, {k: result[k] for k in ("random_init", "rows", "momentum", "craft")})


if __name__ == "__main__":
    script_main(main)
