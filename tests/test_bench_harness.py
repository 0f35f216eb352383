"""The benchmark harness (benchmarks/_harness.py, issue 30): a comparison is a grid file plus the script's
``summarise``. The scripts and ``clpoison grid`` resolve the same runs from the one grid file; ``--summarise-only``
turns finished run folders into the JSON whose keys the docs quote (checked against benchmarks/results/*.json on
fake runs: nothing trains here)."""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from clpoison.errors import ConfigError
from clpoison.experiments.config import load_preset
from clpoison.experiments.grid import expand_grid, read_grid, run_grid
from clpoison.utils.io import dumps_json

import _harness
import _rows  # benchmarks/_rows.py (tests/conftest.py puts benchmarks/ on the path)
from _harness import run_comparison

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
GRIDS = BENCH / "grids"
FLOATS = ("asr", "zeroshot_top1", "backdoor_zscore", "targeted_success_rate", "targeted_expected_by_chance",
          "recall_at_5_i2t", "knn_top1", "linear_top1", "knn_top1_random_init", "ca")
#: record fields whose inner keys come from a preset or the caption set, not from the script
RECORDS = ("attack_params", "trigger", "eval_set")


def script(name: str):
    """The benchmark script ``benchmarks/NAME.py`` as a module (its ``main`` does not run)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def configs(spec: dict, overrides=()) -> dict:
    return {c.name: c.config.to_dict() for c in expand_grid(spec, list(overrides))}


def fake(name: str, key: str, scale: float = 1.0) -> float:
    return round(scale * int(hashlib.sha256(f"{name}/{key}".encode()).hexdigest()[:8], 16) / 2 ** 32, 4)


def fake_run(name: str, config: dict) -> dict:
    """A results.json of ``config`` with made-up metrics, timings and history (a function of the name)."""
    n = name
    m = {k: fake(n, k) for k in FLOATS}
    m.update(asr_n=200, asr_hits=int(fake(n, "hits", 200)), targeted_n=16, targeted_successes=int(fake(n, "k", 16)),
             targeted_expected_by_chance=fake(n, "chance", 3))
    return {"config": json.loads(dumps_json(config)), "metrics": m,
            "timings": {"total_s": fake(n, "total", 100), "pretrain_s": fake(n, "pre", 80)},
            "history": [{"epoch": 1, "eval_asr": fake(n, "a1"), "eval_ca": fake(n, "c1"),
                         "safeclip_poison_recall_risky": fake(n, "rec"), "safeclip_safe_fraction": fake(n, "sf"),
                         "safeclip_gmm_clean_weight": fake(n, "w"), "safeclip_gmm_separation": fake(n, "sep")},
                        {"epoch": 2}],
            "data": {"train_pairs": 5438}, "throughput": {"pretrain_pairs_per_s": fake(n, "pps", 3000)}}


def write_fake_runs(spec: dict, work: Path, overrides=()) -> dict:
    """A finished-looking run folder (results.json of the cell's exact config, a manifest) for every cell."""
    runs = {}
    for c in expand_grid(spec, list(overrides)):
        n, d = c.name, work / "cells" / c.name
        runs[n] = fake_run(n, c.config.to_dict())
        d.mkdir(parents=True)
        (d / "results.json").write_text(json.dumps(runs[n]))
        (d / "manifest.json").write_text(json.dumps(fake_manifest(n)))
    return runs


def fake_manifest(name: str) -> dict:
    return {"trigger": {"shape": [3, 12, 12]}, "targets": {"target": "airplane", "tpr": fake(name, "tpr"),
                                                            "anchor_index": int(fake(name, "anchor", 10))},
            "details": {"target_in_pretraining": False, "excluded_classes": ["airplane"], "poison_count": 244,
                        "craft_images_per_s": 100.0, "selection_seconds": 1.5}}


def fake_run_or_reuse(cfg, out, echo=None, reuse_only=False):
    """Stands in for ``run_or_reuse`` in a first pass of a script that is not grid-backed: writes a finished-looking
    run folder of exactly ``cfg`` (results.json, manifest.json); the second pass, ``--summarise-only``, reuses it."""
    n, out = cfg.name, Path(out)
    m = {k: fake(n, k) for k in (*FLOATS, "asr_knn", "delta_cos", "asr_mismatched", "delta_cos_mismatched",
                                 "linear_top1_poisoned_probe")}
    m.update({f"{k}_random_init": fake(n, k + "ri") for k in ("linear_top1", "linear_top1_poisoned_probe")})
    res = {"config": json.loads(dumps_json(cfg.to_dict())), "metrics": m, "timings": {"total_s": 1.0},
           "history": [{"epoch": 1, "eval_asr": fake(n, "a1"), "eval_knn_top1": fake(n, "k1")}, {"epoch": 2}],
           "data": {"classes": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                                "truck"]}}
    out.mkdir(parents=True)
    (out / "results.json").write_text(json.dumps(res))
    (out / "manifest.json").write_text(json.dumps(fake_manifest(n)))
    return res, False


def schema(x, key: str = ""):
    if isinstance(x, dict) and key not in RECORDS:
        return {k: schema(v, k) for k, v in x.items()}
    return "list" if isinstance(x, list) else "value"


def key_paths(x, prefix: str = "") -> set[str]:
    """Every dotted key path of a :func:`schema`."""
    if not isinstance(x, dict):
        return set()
    return {p for k, v in x.items() for p in (f"{prefix}{k}", *key_paths(v, f"{prefix}{k}."))}


def run_main(mod, argv: list[str], monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", [mod.__file__, *argv])
    mod.main()


def webcaps_args(tmp_path: Path, monkeypatch) -> list[str]:
    """The webcaps arguments of the grid file, in a folder where its test shard exists (a config checks that)."""
    (tmp_path / "shared" / "data" / "webcaps").mkdir(parents=True)
    (tmp_path / "shared" / "data" / "webcaps" / "test-000000.tar").write_bytes(b"")
    (tmp_path / "repo").mkdir()
    monkeypatch.chdir(tmp_path / "repo")
    w = "../shared/data/webcaps"
    return ["--captions", f"{w}/train-{{000000..000003}}.tar", "--test-captions", f"{w}/test-000000.tar"]


def test_scripts_and_clpoison_grid_resolve_the_same_runs_from_the_grid_file(tmp_path, monkeypatch):
    """Each grid-backed script, set to its grid file's settings, runs exactly the cells (names and configs) that
    ``clpoison grid FILE`` runs: the grid file is the one source."""
    carlini = script("carlini_small")
    rates = read_grid(GRIDS / "carlini_small.yaml")["cells"][1]["axes"]["attack.params.poison_rate"]
    assert configs(carlini.grid_spec(3, rates, True)) == configs(read_grid(GRIDS / "carlini_small.yaml"))
    assert configs(script("ssl_small").grid_spec(3, ["simclr", "mocov2", "byol"])) == \
        configs(read_grid(GRIDS / "ssl_small.yaml"))
    spec, rest = _rows.corruptencoder_spec(_rows.corruptencoder_row_names(), range(3), [])
    assert rest == [] and configs(spec) == configs(read_grid(GRIDS / "corruptencoder_small.yaml"))
    assert configs(script("ctrl_small").grid_spec(1)[0]) == configs(read_grid(GRIDS / "ctrl_small.yaml"))
    safe, epochs = script("safeclip_small").grid_spec(3)
    assert epochs == 32 and configs(safe) == configs(read_grid(GRIDS / "safeclip_small.yaml"))
    dose = script("clip_dose")
    import _clip

    ap = argparse.ArgumentParser()
    _clip.add_caption_args(ap)
    caps = _clip.caption_sections(ap.parse_args(webcaps_args(tmp_path, monkeypatch)))
    assert configs(dose.grid_spec(2, captions=caps)) == configs(read_grid(GRIDS / "clip_dose_webcaps.yaml"))
    # the clean control (every CLIP benchmark's clean_s{seed}) evaluates the attack presets' trigger and victims
    control = _rows.carlini_clean_control()
    assert control["attack"]["params"] == {"backdoor": load_preset("carlini-backdoor-small")["attack"]["params"],
                                           "targeted": load_preset("carlini-targeted-small")["attack"]["params"]}
    assert configs(script("clip_defenses_small").grid_spec(3)[0]) == configs(read_grid(GRIDS / "clip_defenses_small.yaml"))
    assert configs(script("clip_small").grid_spec(3)) == configs(read_grid(GRIDS / "clip_small.yaml"))
    bundled = _clip.caption_sections(ap.parse_args([]), always=True)
    assert configs(script("captions_protocol").grid_spec(0, [0.01, 0.05], 0.05, 0.05, bundled, 5438 // 2)) == \
        configs(read_grid(GRIDS / "captions_protocol.yaml"))
    for grid in ("safeclip_small", "clip_dose_webcaps", "clip_defenses_small"):
        assert {k: v for k, v in read_grid(GRIDS / f"{grid}.yaml")["cells"][0].items() if k != "name"} == control


def test_attack_params_overrides_go_to_the_rows_whose_attack_takes_them():
    spec, rest = _rows.corruptencoder_spec(["clean", "ssl_backdoor", "corruptencoder"], [0],
                                           ["attack.params.num_references=5", "attack.params.poison_rate=0.1",
                                            "train.epochs=1"])
    cells = {c.name: c.config for c in expand_grid(spec, rest)}
    assert rest == ["train.epochs=1"] and all(c.train.epochs == 1 for c in cells.values())
    assert cells["corruptencoder_s0"].attack.params["num_references"] == 5
    assert "num_references" not in cells["ssl_backdoor_s0"].attack.params  # SSL-Backdoor has no such parameter
    assert cells["ssl_backdoor_s0"].attack.params["poison_rate"] == 0.1
    clean = cells["clean_s0"].attack.params  # the clean row states its zero poisons itself
    assert (clean["poison_rate"], clean["poison_count"], clean["num_references"]) == (None, 0, 5)
    with pytest.raises(ConfigError, match="no row's attack has the parameter 'nope'"):
        _rows.corruptencoder_spec(["clean"], [0], ["attack.params.nope=1"])
    spec, rest = script("ctrl_small").grid_spec(2, ["attack.params.trigger.magnitude=50",
                                                    "attack.params.poison_count=20", "model.width=4"])
    ctrl = {c.name: c.config for c in expand_grid(spec, rest)}
    assert sorted(ctrl) == ["clean_s0", "clean_s1", "ctrl_s0", "ctrl_s1"] and rest == ["model.width=4"]
    assert all(c.attack.params["trigger"]["magnitude"] == 50 and c.model.width == 4 for c in ctrl.values())
    assert ctrl["ctrl_s1"].attack.params["poison_count"] == 20 and ctrl["ctrl_s1"].seed == 1
    assert (ctrl["clean_s1"].attack.params["poison_rate"], ctrl["clean_s1"].attack.params["poison_count"]) == (None, 0)
    with pytest.raises(ConfigError, match="unknown rows"):
        _rows.corruptencoder_rows("clean,nope")


@pytest.mark.parametrize("name,argv,recorded", [
    ("carlini_small", ["--seeds", "1", "--rates", "0.001,0.0025,0.005,0.01,0.02"], "carlini_small.json"),
    ("ssl_small", ["--seeds", "2"], "ssl_small.json"),
    ("corruptencoder_small", ["--seeds", "2", "--rows", "clean,ssl_backdoor,corruptencoder"],
     "corruptencoder_small.json"),
    ("safeclip_small", ["--seeds", "2", "--count", "100"], "safeclip_webcaps.json"),
    ("safeclip_gmm_cap", ["--seeds", "2"], "safeclip_gmm_cap.json"),
    ("ctrl_small", ["--threads", "2"], "ctrl_small.json"),
])
def test_summarise_only_writes_the_keys_the_docs_quote(name, argv, recorded, tmp_path, monkeypatch):
    """Fake finished runs in a grid folder -> ``--summarise-only`` -> the keys (at every level) of the recorded
    JSON; the summary's values are the runs' (spot checks)."""
    mod = script(name)
    work = tmp_path / "grid"
    ns = {"carlini_small": lambda: mod.grid_spec(1, [0.001, 0.0025, 0.005, 0.01, 0.02], True),
          "ssl_small": lambda: mod.grid_spec(2, ["simclr", "mocov2", "byol"]),
          "corruptencoder_small": lambda: _rows.corruptencoder_spec(["clean", "ssl_backdoor", "corruptencoder"],
                                                                    range(2), [])[0],
          "safeclip_small": lambda: mod.grid_spec(2, None, 100)[0],
          "safeclip_gmm_cap": lambda: mod.grid_spec(2),
          "ctrl_small": lambda: mod.grid_spec(1)[0]}
    runs = write_fake_runs(ns[name](), work)
    out = tmp_path / "out.json"
    run_main(mod, [*argv, "--out", str(out), "--work", str(work), "--summarise-only"], monkeypatch)
    got = json.loads(out.read_text())
    want = json.loads((BENCH / "results" / recorded).read_text())
    assert schema(got) == schema(want)
    if name == "carlini_small":
        assert got["backdoor"]["asr_by_rate_per_seed"]["0.01"] == [runs["backdoor_0.01_s0"]["metrics"]["asr"]]
        assert out.with_suffix(".png").is_file()
    if name == "ssl_small":
        assert got["byol"]["linear_top1"]["per_seed"] == [runs[f"byol_s{s}"]["metrics"]["linear_top1"] for s in range(2)]
    if name == "corruptencoder_small":
        assert got["ssl_backdoor"]["asr"]["per_seed"] == [runs[f"ssl_backdoor_s{s}"]["metrics"]["asr"] for s in range(2)]
        assert got["_meta"]["trigger_area_test"] == 12 * 12 / (32 * 32)
    if name == "safeclip_small":
        assert got["per_seed"]["asr_safeclip"] == [runs[f"backdoor_safeclip_n100_s{s}"]["metrics"]["asr"]
                                                   for s in range(2)]
        assert got["safeclip_epochs"] == 32 and got["count"] == 100 and got["rate"] is None
    if name == "safeclip_gmm_cap":
        assert got["per_seed"]["safe_fraction_last"] == [runs[f"{a}_safeclip_s{s}"]["history"][0]
                                                         ["safeclip_safe_fraction"] for s in range(2)
                                                         for a in ("backdoor", "targeted")]
        assert all(r["config"]["defense"]["params"]["cap_from_gmm"] for r in runs.values())
    if name == "ctrl_small":
        assert got["runs"]["clean"][0]["trace"]["asr"] == [runs["clean_s0"]["history"][0]["eval_asr"],
                                                           runs["clean_s0"]["metrics"]["asr"]]
        m = runs["ctrl_s0"]["metrics"]["ca"] - runs["clean_s0"]["metrics"]["ca"]
        assert got["final"]["poisoned_minus_clean"]["ca"]["per_seed"] == [m] and got["_meta"]["poison_count"] == 244


def test_nlb_small_summarise_only_reuses_every_run_and_writes_the_recorded_keys(tmp_path, monkeypatch):
    """nlb_small is not grid-backed (each row's config names the attacker run's folder): a first pass writes fake
    runs of exactly its configs, ``--summarise-only`` reuses every one (and names a missing one)."""
    mod = script("nlb_small")
    base = {"asr": [i / 10 for i in range(10)], "asr_knn": [i / 20 for i in range(10)],
            "delta_cos": [i / 30 for i in range(10)], "ca": 0.5}
    monkeypatch.setattr(mod, "clean_by_target", lambda run, trigger, seed: base)  # reads a checkpoint
    monkeypatch.chdir(tmp_path)
    argv = ["--seeds", "2", "--threads", "2", "--rows", "clean,target,kmeans,con,random", "--work", "w"]
    with monkeypatch.context() as m:
        m.setattr(_harness, "run_or_reuse", fake_run_or_reuse)
        run_main(mod, [*argv, "--out", "first.json"], monkeypatch)
    run_main(mod, [*argv, "--out", "nlb.json", "--summarise-only"], monkeypatch)
    got, first = json.loads(Path("nlb.json").read_text()), json.loads(Path("first.json").read_text())
    assert schema(got) == schema(json.loads((BENCH / "results" / "nlb_small.json").read_text()))
    assert {k: v for k, v in got.items() if k != "_meta"} == {k: v for k, v in first.items() if k != "_meta"}
    con = json.loads(Path("w/con_s1/results.json").read_text())
    assert con["config"]["attack"]["params"]["encoder"] == str(Path("w") / "attacker_s1")
    anchor = json.loads(Path("w/con_s1/manifest.json").read_text())["targets"]["anchor_index"]
    assert got["rows"]["con"]["asr_minus_clean"]["per_seed"][1] == con["metrics"]["asr"] - base["asr"][anchor]
    Path("w/kmeans_s1/results.json").unlink()
    with pytest.raises(ConfigError, match="kmeans_s1"):
        run_main(mod, [*argv, "--out", "nlb2.json", "--summarise-only"], monkeypatch)


def test_cp_small_summarise_only_reads_exports_runs_and_a_stopped_crafting(tmp_path, monkeypatch):
    """cp_small is not grid-backed (the victims read crafted exports): a first pass writes fake exports and runs,
    ``--summarise-only`` (nothing crafted or trained) gives the same JSON; a crafting stopped by its gate is read
    back from its log, as in the recorded cp_small.json."""
    from clpoison.attacks import ATTACKS
    from clpoison.attacks.cp.craft_diagnostic import CraftingNotBootstrapping
    from clpoison.experiments.poison import craft_dir

    mod = script("cp_small")
    speed = {"noise_images_per_s": 270.0, "bare_images_per_s": 260.0, "ratio_to_bare": 1.04, "device": "cpu"}
    monkeypatch.setattr(mod, "craft_speed", lambda *a: speed)  # a timing of real crafting steps

    def fake_poison(attack, params, data, out, seed=0, device="auto", echo=None, reuse_only=False):
        out = Path(out)
        if params.get("gate"):  # the crafting stops at round 2, as a gate leaves its log
            log = craft_dir(out) / "crafting.jsonl"
            log.parent.mkdir(parents=True)
            log.write_text("".join(json.dumps({"event": "epoch", "epoch": r, "loss_gap": -r / 100,
                                               **({"gate_passed": 0} if r == 2 else {})}) + "\n" for r in (1, 2)))
            raise CraftingNotBootstrapping("stopped", 2, -0.02)
        man = {"attack": {"name": attack}, "params": json.loads(dumps_json(ATTACKS.build(attack, params).params.to_dict())),
               "seed": seed, "details": {"craft_seconds": 3.0, "noise_images_per_s": 99.0, "trace": None}}
        out.mkdir(parents=True)
        (out / "manifest.json").write_text(json.dumps(man))
        (out / "data.npz").write_bytes(b"")
        return man

    monkeypatch.chdir(tmp_path)
    rec_rows = "cp_class,cp_sample,clean,random_noise,random_noise_class,cp_sample_matrix_completion"  # as recorded
    for argv, recorded in ((["--seeds", "1", "--rows", rec_rows,
                             "attack.params.gate=[{round: 2, max_gap: -0.1, action: abort}]"], True),
                           (["--seeds", "1", "--rows", "clean,random_noise,cp_class", "attack.params.gate=[]"], False)):
        work = ["--work", f"w{int(recorded)}"]
        with monkeypatch.context() as m:
            m.setattr(mod, "poison_or_reuse", fake_poison)
            m.setattr(_harness, "run_or_reuse", fake_run_or_reuse)
            run_main(mod, [*argv, *work, "--out", "first.json"], monkeypatch)
        run_main(mod, [*argv, *work, "--out", "cp.json", "--summarise-only"], monkeypatch)
        got, first = json.loads(Path("cp.json").read_text()), json.loads(Path("first.json").read_text())
        if recorded:
            want = schema(json.loads((BENCH / "results" / "cp_small.json").read_text()))
            # the recorded run predates _meta's device and per-preset overrides and craft.device
            assert key_paths(want) <= key_paths(schema(got))
            assert key_paths(schema(got)) - key_paths(want) == {"_meta.cp_class", "_meta.cp_sample", "_meta.device",
                                                                 "craft.device"}
            assert got["craft"]["gate_aborts"]["cp_class"] == [{"seed": 0, "round": 2, "loss_gap": -0.02}]
            assert got["craft"]["trace"]["cp_class"][0]["loss_gap"] == [-0.01, -0.02] and got["rows"] == {}
            assert got["craft"]["cp_class_seconds"] is None  # not in the log
            first["craft"]["cp_class_seconds"] = None
            first["per_seed"]["craft"]["cp_class_s"] = [None]
        else:
            victim = json.loads(Path("w0/cp_class_s0/results.json").read_text())
            assert victim["config"]["attack"]["params"]["path"] == str(Path("w0") / "cp_class_data_s0")
            assert got["rows"]["cp_class"]["linear_top1"] == victim["metrics"]["linear_top1"]
        assert {k: v for k, v in got.items() if k != "_meta"} == {k: v for k, v in first.items() if k != "_meta"}
    with pytest.raises(ConfigError, match="cp_class_data_s0"):  # no export: nothing is crafted
        run_main(mod, ["--seeds", "1", "--work", "w2", "--out", "cp3.json", "--summarise-only"], monkeypatch)


def test_clip_dose_summary_keys_and_pooled_intervals(tmp_path, monkeypatch):
    mod = script("clip_dose")
    work = tmp_path / "grid"
    runs = write_fake_runs(mod.grid_spec(2, [10, 50], [1, 5]), work)
    monkeypatch.setattr(mod, "plot", lambda *a: None)  # carlini_small's test draws one
    drawn, real = [], mod.plot_pairs
    monkeypatch.setattr(mod, "plot_pairs", lambda result, path: drawn.append((result, path)))
    out = tmp_path / "dose.json"
    run_main(mod, ["--seeds", "2", "--counts", "10,50", "--pairs", "1,5", "--out", str(out), "--work", str(work),
                   "--summarise-only"], monkeypatch)
    got = json.loads(out.read_text())
    assert set(got) == {"caption_set", "clean", "backdoor_by_count", "targeted_by_pairs", "target", "train_pairs",
                        "captions", "test_captions", "eval_set", "seeds", "overrides", "wall_s"}
    assert set(got["clean"]) == {"asr", "asr_ci95", "asr_per_seed", "targeted", "targeted_ci95", "successes_per_seed",
                                 "expected_by_chance_per_seed", "zeroshot", "recall_at_5_i2t"}
    assert list(got["backdoor_by_count"]) == ["10", "50"] and list(got["targeted_by_pairs"]) == ["1", "5"]
    assert set(got["backdoor_by_count"]["50"]) == {"asr", "asr_ci95", "asr_std", "asr_per_seed", "zeroshot",
                                                   "poison_rate"}
    assert set(got["targeted_by_pairs"]["5"]) == {"success", "success_ci95", "success_std", "successes_per_seed",
                                                  "expected_by_chance_per_seed", "targets", "zeroshot"}
    assert got["targeted_by_pairs"]["1"]["expected_by_chance_per_seed"] == [
        runs[f"targeted_k1_s{s}"]["metrics"]["targeted_expected_by_chance"] for s in range(2)]
    assert [p.name for _, p in drawn] == ["dose_pairs.png"]  # pairs measured: the pairs plot beside the JSON
    curves = {}  # the pairs plot: success, the clean model and chance as rates of the 16 victims, a point per seed
    monkeypatch.setattr(mod, "curve_plot", lambda path, c, *a, points=None, **k: curves.update(c, points=points))
    real(got, tmp_path / "pairs.png")
    k1 = got["targeted_by_pairs"]["1"]
    assert curves["mean over seeds"] == ([1, 5], [k1["success"], got["targeted_by_pairs"]["5"]["success"]])
    assert curves["clean model"] == ([1, 5], [got["clean"]["targeted"]] * 2)
    assert curves["expected by chance"][1][0] == pytest.approx(sum(k1["expected_by_chance_per_seed"]) / 2 / 16)
    assert curves["points"][1][1][0] == k1["successes_per_seed"][1] / 16
    for r in got["targeted_by_pairs"].values():  # a run without a chance level: no chance curve, the rest drawn
        r["expected_by_chance_per_seed"] = [None, None]
    curves.clear()
    real(got, tmp_path / "pairs.png")
    assert "expected by chance" not in curves and "mean over seeds" in curves
    hits = sum(runs[f"backdoor_n50_s{s}"]["metrics"]["asr_hits"] for s in range(2))
    from clpoison.eval.attack_metrics import wilson_interval

    assert got["backdoor_by_count"]["50"]["asr_ci95"] == list(wilson_interval(hits, 400))
    assert got["targeted_by_pairs"]["5"]["successes_per_seed"] == [runs[f"targeted_s{s}"]["metrics"]
                                                                   ["targeted_successes"] for s in range(2)]


def test_summarise_only_names_a_missing_or_changed_run(tmp_path, capsys, monkeypatch):
    mod = script("ssl_small")
    spec = mod.grid_spec(1, ["simclr", "byol"])
    write_fake_runs(spec, tmp_path)
    assert set(run_comparison(spec, tmp_path, summarise_only=True)) == {"simclr_s0", "byol_s0"}
    with pytest.raises(ConfigError, match="simclr_s0's config"):  # the runs were of another config
        run_comparison(spec, tmp_path, ["train.epochs=1"], summarise_only=True)
    old = tmp_path / "old"  # a --work folder of the scripts' earlier layout (WORK/NAME): one line saying how to move it
    write_fake_runs(spec, old)
    (old / "cells" / "byol_s0").rename(old / "byol_s0")
    with pytest.raises(ConfigError, match="earlier layout .*byol_s0"):
        run_comparison(spec, old)
    (old / "byol_s0").rename(old / "cells" / "byol_s0")  # moved as the line says (a folder with cells/, no grid.json):
    assert not (old / "grid.json").exists()  # the runs are reused, nothing trains
    assert set(run_comparison(spec, old, echo=lambda s: None)) == {"simclr_s0", "byol_s0"}
    assert {c["status"] for c in json.loads((old / "grid.json").read_text())["cells"]} == {"reused"}
    (tmp_path / "cells" / "simclr_s0" / "results.json").unlink()
    monkeypatch.setattr(sys, "argv", ["ssl_small.py", "--out", str(tmp_path / "o.json"), "--work", str(tmp_path),
                                      "--seeds", "1", "--summarise-only"])
    from _harness import script_main

    with pytest.raises(SystemExit) as e:
        script_main(mod.main)
    assert e.value.code == 2 and "simclr_s0" in capsys.readouterr().err and not (tmp_path / "o.json").exists()


def keys_within(want, got, where: str = "") -> None:
    """Every key of the recorded JSON ``want`` is in ``got`` at the same place (records and lists not entered)."""
    if isinstance(want, dict) and where.rsplit(".", 1)[-1] not in RECORDS:
        for k, v in want.items():
            assert k in got, f"{where}.{k} missing"
            keys_within(v, got[k], f"{where}.{k}")


def bundled_sections() -> dict:
    """The bundled caption set as explicit config sections (captions_protocol's base)."""
    import _clip

    ap = argparse.ArgumentParser()
    _clip.add_caption_args(ap)
    return _clip.caption_sections(ap.parse_args([]), always=True)


def test_the_clip_comparisons_share_their_runs_in_one_work_folder(tmp_path, monkeypatch):
    """clip_defenses_small's clean, plain-CLIP and SafeCLIP cells are safeclip_small's (its plain and clean cells
    also carlini_small's and, at a count, clip_dose's), on the bundled captions and on webcaps: one --work folder
    trains each once."""
    import _clip

    defenses, safe, dose = script("clip_defenses_small"), script("safeclip_small"), script("clip_dose")
    d, c = configs(defenses.grid_spec(3)[0]), configs(read_grid(GRIDS / "carlini_small.yaml"))
    assert set(d) & set(c) == {f"{n}_s{i}" for n in ("clean", "backdoor_0.01", "targeted") for i in range(3)}
    assert all(d[n] == c[n] for n in set(d) & set(c))
    ap = argparse.ArgumentParser()
    _clip.add_caption_args(ap)
    for caps in ({}, _clip.caption_sections(ap.parse_args(webcaps_args(tmp_path, monkeypatch)))):
        d = configs(defenses.grid_spec(2, None, 100, caps)[0])
        s, g = configs(safe.grid_spec(2, None, 100, captions=caps)[0]), configs(dose.grid_spec(2, [100], [5], caps))
        assert set(d) & set(s) == {f"{n}_s{i}" for n in ("clean", "backdoor_n100", "backdoor_safeclip_n100", "targeted",
                                                          "targeted_safeclip") for i in range(2)}
        assert set(d) & set(g) == {f"{n}_s{i}" for n in ("clean", "backdoor_n100", "targeted") for i in range(2)}
        assert all(d[n] == s[n] for n in set(d) & set(s)) and all(d[n] == g[n] for n in set(d) & set(g))
        assert {n for n in d if "roclip" in n} == {f"{a}_roclip{t}_s{i}" for a, t in (("backdoor", "_n100"),
                                                                                       ("targeted", "")) for i in range(2)}
    # a --roclip override wins on the RoCLIP cells over an override for every run of the same key (as before the grid)
    spec, rest = defenses.grid_spec(1, roclip=["train.epochs=3"], overrides=["train.epochs=2", "train.lr=0.1"])
    cells = {c.name: c.config for c in expand_grid(spec, rest)}
    assert rest == ["train.lr=0.1"] and all(c.train.lr == 0.1 for c in cells.values())
    assert {n: c.train.epochs for n, c in cells.items() if c.train.epochs != 2} == \
        {"backdoor_roclip_0.01_s0": 3, "targeted_roclip_s0": 3}
    # --safeclip overrides reach the SafeCLIP cells only, and win there over an override for every run
    spec, rest = defenses.grid_spec(1, safeclip=["defense.params.trace_warmup=true", "train.epochs=5"],
                                    overrides=["train.epochs=2"])
    cells = {c.name: c.config for c in expand_grid(spec, rest)}
    assert rest == [] and {n for n, c in cells.items() if c.defense.params.get("trace_warmup")} == \
        {"backdoor_safeclip_0.01_s0", "targeted_safeclip_s0"}
    assert {n: c.train.epochs for n, c in cells.items() if c.train.epochs != 2} == \
        {"backdoor_safeclip_0.01_s0": 5, "targeted_safeclip_s0": 5}


def test_clip_defenses_summarise_only_with_the_cleanclip_search(tmp_path, monkeypatch):
    """The grid's cells from the folder; each CleanCLIP run (not a cell: it names its parent's folder) reused by
    run_named, fine-tuning the plain-CLIP cell of its attack and seed; the recorded JSON's keys, the search's
    settings and the chosen row."""
    mod = script("clip_defenses_small")
    work = tmp_path / "grid"
    runs = write_fake_runs(mod.grid_spec(2, None, 100, roclip=["defense.params.break_epoch=4"])[0], work)
    import _harness

    def reuse(cfg, out, reuse_only=False):  # the CleanCLIP runs: only reused under --summarise-only
        assert reuse_only and out == work / "cells" / cfg.name
        runs[cfg.name] = {**fake_run(cfg.name, cfg.to_dict()),
                          "defense": {"cleanclip_checkpoint_train_s": fake(cfg.name, "parent", 90)}}
        return runs[cfg.name], True

    monkeypatch.setattr(_harness, "run_or_reuse", reuse)
    out = tmp_path / "defenses.json"
    run_main(mod, ["--seeds", "2", "--count", "100", "--cleanclip-epochs", "10", "40", "--cleanclip-pairs", "1000",
                   "--roclip", "defense.params.break_epoch=4", "--out", str(out), "--work", str(work),
                   "--summarise-only"], monkeypatch)
    got = json.loads(out.read_text())
    want = json.loads((BENCH / "results" / "clip_defenses_small.json").read_text())  # recorded without a search
    keys_within({k: v for k, v in want.items() if k != "per_seed"}, got)
    assert set(got["per_seed"]) == {"clip", "safeclip", "roclip", "cleanclip_e10_p1000", "cleanclip_e40_p1000",
                                    "clean_model"}
    cc = {n: r["config"] for n, r in runs.items() if "_cleanclip" in n}
    assert sorted(cc) == sorted(f"{a}_cleanclip_e{e}_p1000{t}_s{i}" for a, t in (("backdoor", "_n100"), ("targeted", ""))
                                for e in (10, 40) for i in range(2))
    assert cc["backdoor_cleanclip_e40_p1000_n100_s1"]["defense"]["params"]["checkpoint"] == \
        str(work.resolve() / "cells" / "backdoor_n100_s1")
    assert cc["backdoor_cleanclip_e40_p1000_n100_s1"]["train"]["epochs"] == 40
    assert set(got["cleanclip_search"]) == {"e10_p1000", "e40_p1000"}
    chosen = got["cleanclip_choice"]["setting"]
    assert got["rows"]["cleanclip"] == {k: v for k, v in got["cleanclip_search"][chosen].items()
                                        if k not in ("epochs", "pairs")}
    assert got["per_seed"]["roclip"]["asr"] == [runs[f"backdoor_roclip_n100_s{i}"]["metrics"]["asr"] for i in range(2)]
    assert got["rows"]["clip"]["time_ratio"] == 1.0 and got["count"] == 100 and got["rate"] is None
    t = sum(runs[f"{a}_cleanclip_e10_p1000{tag}_s0"]["timings"]["pretrain_s"]
            + runs[f"{a}_cleanclip_e10_p1000{tag}_s0"]["defense"]["cleanclip_checkpoint_train_s"]
            for a, tag in (("backdoor", "_n100"), ("targeted", "")))
    assert got["per_seed"]["cleanclip_e10_p1000"]["time_s"][0] == round(t, 2)  # fine-tuning + the poisoned pretraining


def test_clip_defenses_one_attack_without_the_control(tmp_path, monkeypatch):
    """--attacks targeted --no-control: only the targeted cells (no clean control, no backdoor cell) and only the
    targeted CleanCLIP runs; the backdoor's and the clean model's keys NaN, each row's zero-shot the targeted run's;
    an unknown attack is one ConfigError line before anything runs."""
    import math

    import _harness

    mod = script("clip_defenses_small")
    spec = mod.grid_spec(2, None, 100, attacks=("targeted",), control=False)[0]
    names = {c.name for c in expand_grid(spec)}
    assert names == {f"targeted{r}_s{i}" for r in ("", "_safeclip", "_roclip") for i in range(2)}
    work = tmp_path / "grid"
    runs = write_fake_runs(spec, work)

    def reuse(cfg, out, reuse_only=False):
        assert cfg.name.startswith("targeted_cleanclip")
        runs[cfg.name] = {**fake_run(cfg.name, cfg.to_dict()),
                          "defense": {"cleanclip_checkpoint_train_s": fake(cfg.name, "parent", 90)}}
        return runs[cfg.name], True

    monkeypatch.setattr(_harness, "run_or_reuse", reuse)
    out = tmp_path / "targeted.json"
    run_main(mod, ["--seeds", "2", "--attacks", "targeted", "--no-control", "--cleanclip-epochs", "10", "40",
                   "--out", str(out), "--work", str(work), "--summarise-only"], monkeypatch)
    got = json.loads(out.read_text())
    assert got["attacks"] == ["targeted"] and got["control"] is False
    assert math.isnan(got["rows"]["clip"]["asr"]) and math.isnan(got["clean_model"]["targeted"])
    assert got["per_seed"]["roclip"]["zeroshot"] == [runs[f"targeted_roclip_s{i}"]["metrics"]["zeroshot_top1"]
                                                     for i in range(2)]
    assert got["rows"]["safeclip"]["targeted"] == pytest.approx(
        sum(runs[f"targeted_safeclip_s{i}"]["metrics"]["targeted_success_rate"] for i in range(2)) / 2)
    assert sorted(n for n in runs if "cleanclip" in n) == sorted(f"targeted_cleanclip_e{e}_p1000_s{i}"
                                                               for e in (10, 40) for i in range(2))
    search = got["cleanclip_search"]  # no ASR to choose by: the lowest targeted success
    assert got["cleanclip_choice"]["setting"] == min(search, key=lambda t: search[t]["targeted"])
    assert got["cleanclip_choice"]["rule"].startswith("targeted poisoning only")
    with pytest.raises(ConfigError, match="--attacks: unknown attack 'bakdoor'"):
        run_main(mod, ["--attacks", "targeted,bakdoor", "--out", str(tmp_path / "x.json"), "--work", str(work),
                       "--summarise-only"], monkeypatch)
    assert not (tmp_path / "x.json").exists()


def test_captions_protocol_summarise_only(tmp_path, monkeypatch):
    """The grid's cells (the reference at half of the clean run's pairs) -> the clean model's controls, the export
    and the scans from the cells' folders -> exactly the recorded JSON's keys (details: at least them)."""
    mod = script("captions_protocol")
    work = tmp_path / "grid"
    runs = write_fake_runs(mod.grid_spec(0, [0.01, 0.05], 0.05, 0.05, bundled_sections(), 5438 // 2), work)
    seen: dict = {"evaluated": [], "scans": []}

    def scan(out, data, **kw):
        seen["scans"].append((Path(out).name, kw.get("reference"), kw.get("checkpoint")))
        return {"roc_auc": fake(Path(out).name, "auc"), "roc_auc_checkpoint": fake(Path(out).name, "ck")}

    monkeypatch.setattr(mod, "read_checkpoint", lambda p: {})
    monkeypatch.setattr(mod, "evaluate_run", lambda p, ck, ov, manifest: seen["evaluated"].append((p, manifest))
                        or {"metrics": {"asr": 0.07, "targeted_success_rate": 0.0625, "targeted_successes": 1}})
    monkeypatch.setattr(mod, "export", lambda params, data, out, seed, size: seen.update(export=(out, seed, size)))
    monkeypatch.setattr(mod, "scan_data", scan)
    out = tmp_path / "protocol.json"
    run_main(mod, ["--out", str(out), "--work", str(work), "--summarise-only"], monkeypatch)
    got, want = json.loads(out.read_text()), json.loads((BENCH / "results" / "captions_protocol.json").read_text())
    assert set(got) == {"caption_set", *want} and schema({k: got[k] for k in want}) == schema(want)
    assert set(json.loads((BENCH / "results" / "captions_protocol.details.json").read_text())) <= \
        set(json.loads(out.with_suffix(".details.json").read_text()))
    cells = work / "cells"
    assert got["backdoor"]["0.05"]["asr"] == runs["backdoor_0.05_s0"]["metrics"]["asr"]
    assert got["safeclip"]["targeted"] == runs["targeted_safeclip_s0"]["metrics"]["targeted_success_rate"]
    assert got["clean"]["asr"] == 0.07 and got["targeted"]["success_clean"] == 0.0625
    assert seen["evaluated"] == [(cells / "clean_s0" / "checkpoint.pt", str(cells / f"{n}_s0" / "manifest.json"))
                                 for n in ("backdoor_0.01", "targeted")]
    assert seen["export"] == (work / "export_backdoor_0.05_s0", 0, 32)
    assert seen["scans"][0] == ("scan_backdoor_0.05_s0.csv", str(cells / "reference_s0"), str(cells / "backdoor_0.05_s0"))
    assert got["scan"]["reference_model_auc"] == fake("scan_backdoor_0.05_s0.csv", "auc")


def test_clip_small_summarise_only(tmp_path, monkeypatch):
    mod = script("clip_small")
    work = tmp_path / "grid"
    runs = write_fake_runs(mod.grid_spec(2), work)
    monkeypatch.setattr(mod, "bare_fwd_bwd", lambda cfg: 1000.0)
    out = tmp_path / "clip_small.json"
    run_main(mod, ["--seeds", "2", "--out", str(out), "--work", str(work), "--summarise-only"], monkeypatch)
    got, want = json.loads(out.read_text()), json.loads((BENCH / "results" / "clip_small.json").read_text())
    assert set(got) == set(want) and set(got["runs"][0]) == set(want["runs"][0])
    assert set(got["summary"]) <= set(want["summary"]) and "zeroshot_top1" in got["summary"]
    assert [r["seed"] for r in got["runs"]] == [0, 1]
    assert got["runs"][1]["wall_s"] == runs["clip_small_s1"]["timings"]["total_s"]
    pps = [runs[f"clip_small_s{i}"]["throughput"]["pretrain_pairs_per_s"] for i in range(2)]
    assert got["pipeline_to_bare_ratio"] == pytest.approx(sum(pps) / 2 / 1000.0)


def test_a_folder_of_cells_without_grid_json_is_adopted(tmp_path):
    """WORK/cells/NAME without grid.json (clip_defenses_small's runs before it was grid-backed) is reused as a grid
    folder (``run_grid``'s rule: a folder holding only ``cells/``); a folder holding anything else is still refused."""
    spec = script("ssl_small").grid_spec(1, ["simclr", "byol"])
    write_fake_runs(spec, tmp_path / "w")
    assert set(run_comparison(spec, tmp_path / "w", echo=lambda s: None)) == {"simclr_s0", "byol_s0"}
    state = json.loads((tmp_path / "w" / "grid.json").read_text())
    assert [(c["name"], c["status"]) for c in state["cells"]] == [("simclr_s0", "reused"), ("byol_s0", "reused")]
    write_fake_runs(spec, tmp_path / "v")  # moved in by hand: never deleted, even with --overwrite
    with pytest.raises(ConfigError, match="no grid wrote; --overwrite deletes only"):
        run_grid(spec, tmp_path / "v", overwrite=True)
    assert (tmp_path / "v" / "cells" / "simclr_s0" / "results.json").is_file()
    write_fake_runs(spec, tmp_path / "x")
    (tmp_path / "x" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a grid folder"):
        run_comparison(spec, tmp_path / "x", echo=lambda s: None)


def test_harness_doctests():
    import doctest

    import _clip
    import _harness

    for mod in (_harness, _rows, _clip):
        assert doctest.testmod(mod).failed == 0, mod.__name__


def test_every_benchmark_script_imports():
    """The scripts import the harness and rows from benchmarks/ (no library module), so each one loads."""
    names = sorted(p.stem for p in BENCH.glob("*.py") if not p.stem.startswith("_"))
    assert len(names) >= 20
    for n in names:
        assert callable(script(n).main), n


def test_every_grids_safeclip_section_is_the_presets():
    """The grid files state SafeCLIP's sections (``x-safeclip``) in full, as the scripts always did: each must be
    the ``safeclip-small`` preset's defense section and epochs, so a preset change cannot leave a grid behind."""
    import yaml

    preset = load_preset("safeclip-small")
    files = {f.name: yaml.safe_load(f.read_text()) for f in sorted(GRIDS.glob("*.yaml"))}
    files = {n: spec for n, spec in files.items() if "x-safeclip" in spec}
    assert set(files) >= {"safeclip_small.yaml", "clip_defenses_small.yaml", "captions_protocol.yaml"}
    for name, spec in files.items():
        assert spec["x-safeclip"] == preset["defense"], name
        for cell in spec["cells"]:
            if cell.get("defense", {}).get("name") == "safeclip":
                assert cell.get("train", {}).get("epochs") == preset["train"]["epochs"], (name, cell["name"])
