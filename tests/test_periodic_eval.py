"""eval.every_epochs: attack and clean metrics recorded during training, without changing the training itself."""

import pytest
import torch

from clpoison.experiments.config import build_config
from clpoison.experiments.runner import periodic_eval, run_experiment, run_or_reuse
from clpoison.report.tables import history_curve
from clpoison.errors import ConfigError

TINY = ["train.epochs=3", "eval.knn_k=50", "data.train_limit=192", "data.test_limit=64", "train.batch_size=64", "model.arch=convnet",
        "eval.random_init_control=false", "eval.linear=false", "train.progress=false",
        "attack.name=ssl-backdoor", "attack.params.target=airplane", "attack.params.poison_count=8",
        "attack.params.trigger.size=4"]


@pytest.mark.slow
def test_every_epochs_records_asr_and_leaves_training_unchanged(tmp_path):
    plain = run_experiment(build_config({"preset": "simclr-small"}, TINY), tmp_path / "a")
    every = run_experiment(build_config({"preset": "simclr-small"}, [*TINY, "eval.every_epochs=1"]), tmp_path / "b")
    h = every["history"]
    assert [("eval_asr" in r, "eval_knn_top1" in r) for r in h] == [(True, True), (True, True), (False, False)]
    assert all(0.0 <= r["eval_asr"] <= 1.0 for r in h[:2])
    for key in ("eval_asr_knn", "eval_asr_knn_all", "eval_delta_cos", "eval_asr_mismatched", "eval_delta_cos_mismatched"):
        assert all(isinstance(r[key], float) for r in h[:2]), key  # the backdoor controls are traced too
    # same seed: the evaluations restore RNG state and train mode, so losses and final metrics are identical
    assert [r["loss"] for r in h] == [r["loss"] for r in plain["history"]]
    assert every["metrics"]["asr"] == plain["metrics"]["asr"]
    assert every["metrics"]["knn_top1"] == plain["metrics"]["knn_top1"]


def test_the_trace_records_the_configured_epochs():
    """ctrl-small's every 25 of 250 epochs: the hook evaluates after epochs 25, 50, ..., 225 (the last epoch is the
    run's own final evaluation), so the trace holds exactly every 25th epoch up to 250; train mode is restored."""
    method = torch.nn.Linear(2, 2)

    class Task:
        def evaluate(self, m, splits):
            m.eval()
            return {"knn_top1": 0.5}, {}

        def context(self, m, splits, poisoned, extras):
            return {}

    class Attack:
        def evaluate(self, ctx):
            return {"asr": 0.25, "asr_knn": 0.125, "anchor": "ship"}

    hook = periodic_eval(Task(), method, Attack(), None, None, 25, 250)
    history = [{"epoch": e, **hook(None, e)} for e in range(1, 251)]
    assert [h["epoch"] for h in history if "eval_asr" in h] == list(range(25, 250, 25))
    assert all(h["eval_knn_top1"] == 0.5 and h["eval_asr_knn"] == 0.125 and "eval_anchor" not in h
               for h in history if "eval_asr" in h)  # scalar metrics only
    assert method.training
    curve = history_curve({"history": history, "metrics": {"asr": 0.375, "asr_knn": 0.0}}, "asr", "asr_knn")
    assert curve["epochs"] == list(range(25, 251, 25)) and curve["asr"] == [0.25] * 9 + [0.375]


def test_every_epochs_must_be_non_negative():
    with pytest.raises(ConfigError, match="eval.every_epochs"):
        build_config({"preset": "simclr-small"}, ["eval.every_epochs=-1"])


@pytest.mark.slow
def test_run_or_reuse_reuses_only_the_same_config(tmp_path):
    cfg = build_config({"preset": "simclr-small"}, [*TINY, "train.epochs=1"])
    first, reused = run_or_reuse(cfg, tmp_path / "r")
    assert not reused
    again, reused = run_or_reuse(build_config({"preset": "simclr-small"}, [*TINY, "train.epochs=1"]), tmp_path / "r")
    assert reused and again["metrics"] == first["metrics"]
    other, reused = run_or_reuse(build_config({"preset": "simclr-small"}, [*TINY, "train.epochs=1", "seed=1"]), tmp_path / "r")
    assert not reused and other["config"]["seed"] == 1


@pytest.mark.slow
def test_random_init_control_leaves_training_unchanged(tmp_path):
    """The random-init control (kNN and a linear probe on the untrained encoder, before training) draws nothing
    from the RNGs training uses: the run with it has the losses and metrics of the run without it."""
    base = [o for o in TINY if not o.startswith(("eval.random_init_control", "eval.linear"))] + ["train.epochs=1"]
    off = run_experiment(build_config({"preset": "simclr-small"}, [*base, "eval.random_init_control=false"]), tmp_path / "a")
    on = run_experiment(build_config({"preset": "simclr-small"}, [*base, "eval.random_init_control=true",
                                                                   "eval.random_init_linear=true"]), tmp_path / "b")
    assert "linear_top1_random_init" in on["metrics"] and "knn_top1_random_init" in on["metrics"]
    assert [r["loss"] for r in on["history"]] == [r["loss"] for r in off["history"]]
    assert on["metrics"]["linear_top1"] == off["metrics"]["linear_top1"] and on["metrics"]["asr"] == off["metrics"]["asr"]


def test_a_key_added_to_the_schema_later_at_null_is_no_change():
    """Runs written before `model.init` (or `data.exclude_classes`) existed are reused / resumed: a key absent from
    the old snapshot and null / empty in the new one is no change; set, or any other difference, still is."""
    from clpoison.experiments.fingerprint import config_changes

    new = build_config({"preset": "clip-small"}, []).to_dict()
    old = {**new, "model": {k: v for k, v in new["model"].items() if k != "init"}}
    assert config_changes(old, new) == []
    older = {**old, "data": {k: v for k, v in new["data"].items() if k != "exclude_classes"}}  # empty list: same
    assert config_changes(older, new) == []
    assert config_changes(older, {**new, "data": {**new["data"], "exclude_classes": ["cat"]}}) == ["data.exclude_classes"]
    assert config_changes(old, {**new, "model": {**new["model"], "init": "/m"}}) == ["model.init"]
    assert config_changes(old, {**new, "seed": 1}) == ["seed"]
