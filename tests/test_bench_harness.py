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
from clpoison.experiments.grid import expand_grid, read_grid
from clpoison.utils.io import dumps_json

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


def write_fake_runs(spec: dict, work: Path, overrides=()) -> dict:
    """A finished-looking run folder (results.json of the cell's exact config, a manifest) for every cell."""
    runs = {}
    for c in expand_grid(spec, list(overrides)):
        n, d = c.name, work / "cells" / c.name
        m = {k: fake(n, k) for k in FLOATS}
        m.update(asr_n=200, asr_hits=int(fake(n, "hits", 200)), targeted_n=16, targeted_successes=int(fake(n, "k", 16)))
        runs[n] = {"config": json.loads(dumps_json(c.config.to_dict())), "metrics": m,
                   "timings": {"total_s": fake(n, "total", 100), "pretrain_s": fake(n, "pre", 80)},
                   "history": [{"epoch": 1, "eval_asr": fake(n, "a1"), "eval_ca": fake(n, "c1"),
                                "safeclip_poison_recall_risky": fake(n, "rec"), "safeclip_safe_fraction": fake(n, "sf"),
                                "safeclip_gmm_clean_weight": fake(n, "w"), "safeclip_gmm_separation": fake(n, "sep")},
                               {"epoch": 2}],
                   "data": {"train_pairs": 5438}}
        d.mkdir(parents=True)
        (d / "results.json").write_text(json.dumps(runs[n]))
        (d / "manifest.json").write_text(json.dumps({"trigger": {"shape": [3, 12, 12]}, "details": {
            "target_in_pretraining": False, "excluded_classes": ["airplane"], "poison_count": 244,
            "craft_images_per_s": 100.0}}))
    return runs


def schema(x, key: str = ""):
    if isinstance(x, dict) and key not in RECORDS:
        return {k: schema(v, k) for k, v in x.items()}
    return "list" if isinstance(x, list) else "value"


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
    for grid in ("safeclip_small", "clip_dose_webcaps"):
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
    with pytest.raises(ConfigError, match="unknown rows"):
        _rows.corruptencoder_rows("clean,nope")


@pytest.mark.parametrize("name,argv,recorded", [
    ("carlini_small", ["--seeds", "1", "--rates", "0.001,0.0025,0.005,0.01,0.02"], "carlini_small.json"),
    ("ssl_small", ["--seeds", "2"], "ssl_small.json"),
    ("corruptencoder_small", ["--seeds", "2", "--rows", "clean,ssl_backdoor,corruptencoder"],
     "corruptencoder_small.json"),
    ("safeclip_small", ["--seeds", "2", "--count", "100"], "safeclip_webcaps.json"),
    ("safeclip_gmm_cap", ["--seeds", "2"], "safeclip_gmm_cap.json"),
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
          "safeclip_gmm_cap": lambda: mod.grid_spec(2)}
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


def test_clip_dose_summary_keys_and_pooled_intervals(tmp_path, monkeypatch):
    mod = script("clip_dose")
    work = tmp_path / "grid"
    runs = write_fake_runs(mod.grid_spec(2, [10, 50], [1, 5]), work)
    monkeypatch.setattr(mod, "plot", lambda *a: None)  # carlini_small's test draws one
    out = tmp_path / "dose.json"
    run_main(mod, ["--seeds", "2", "--counts", "10,50", "--pairs", "1,5", "--out", str(out), "--work", str(work),
                   "--summarise-only"], monkeypatch)
    got = json.loads(out.read_text())
    assert set(got) == {"caption_set", "clean", "backdoor_by_count", "targeted_by_pairs", "target", "train_pairs",
                        "captions", "test_captions", "eval_set", "seeds", "overrides", "wall_s"}
    assert set(got["clean"]) == {"asr", "asr_ci95", "asr_per_seed", "targeted", "targeted_ci95", "successes_per_seed",
                                 "zeroshot", "recall_at_5_i2t"}
    assert list(got["backdoor_by_count"]) == ["10", "50"] and list(got["targeted_by_pairs"]) == ["1", "5"]
    assert set(got["backdoor_by_count"]["50"]) == {"asr", "asr_ci95", "asr_std", "asr_per_seed", "zeroshot",
                                                   "poison_rate"}
    assert set(got["targeted_by_pairs"]["5"]) == {"success", "success_ci95", "success_std", "successes_per_seed",
                                                  "targets", "zeroshot"}
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
