"""Contrastive Poisoning's shortcut diagnostic (the loss gap under one augmentation draw, sign consistency, gates),
CP-S started from a CP-C crafted in the same run, exact resume with the diagnostic's state, and the poisoned-probe
metric (tiny tensors, a few seconds)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

import clpoison.attacks.cp.contrastive_poisoning as cp
import clpoison.attacks.cp.noise_crafting as nc
from clpoison.attacks import ATTACKS
from clpoison.attacks.cp.craft_diagnostic import CraftingNotBootstrapping, CraftTrace, clean_loss, trace_from_log
from clpoison.attacks.cp.noise_crafting import CraftSettings, noise_phase
from clpoison.data.augment import EvalTransform
from clpoison.contexts import EpochView, EvalContext, PoisonContext
from clpoison.data.datasets import ImageDataset, ImageSplits
from clpoison.errors import ClpoisonError, ConfigError
from clpoison.eval.encoder_eval import evaluate_encoder, poisoned_probe_metrics
from clpoison.experiments.config import EvalConfig
from clpoison.utils.seed import get_rng_state
from test_contrastive_poisoning import FAST, make_batches, tiny_splits

CPC = {"rounds": 2, "model_steps": 2, "noise_steps": 2, "pgd_steps": 1}


def delta_of(art: bytes) -> np.ndarray:
    with np.load(io.BytesIO(art), allow_pickle=False) as z:
        return z["delta"]


def phase(method, noise, batches, trace=None, pgd_steps: int = 1) -> dict:
    s = CraftSettings(noise_steps=1, pgd_steps=pgd_steps, batch_size=16, noise_updates_state=False)
    return noise_phase(method, EpochView(step=0, total_steps=1), noise, batches, s, 0, trace=trace)


def test_a_zero_delta_gives_a_gap_of_exactly_zero_under_the_shared_augmentation_draw():
    method, noise, batches, sp = make_batches()
    noise.delta.zero_()
    torch.manual_seed(3)
    assert phase(method, noise, batches)["loss_gap"] == 0.0
    # the draw is what makes it exact: the clean loss under a fresh draw differs from the poisoned one
    idx, x = torch.arange(16), sp.train.images[:16].float().div(255)
    torch.manual_seed(4)
    shared = get_rng_state()
    a = clean_loss(method, batches.views, x, idx, False, shared, None)
    torch.manual_seed(5)  # another draw
    b = clean_loss(method, batches.views, x, idx, False, get_rng_state(), None)
    assert a == clean_loss(method, batches.views, x, idx, False, shared, None) and a != b
    method, noise, batches, _ = make_batches(epsilon=0.5)  # a real δ moves the loss
    torch.manual_seed(3)
    assert phase(method, noise, batches)["loss_gap"] != 0.0


def test_sign_consistency_counts_entries_stepped_the_same_way_in_two_rounds():
    delta = torch.zeros(2, 4)
    trace = CraftTrace(delta)
    assert trace.end_round(torch.tensor([[1, -2, 0, 3], [0, 0, 0, 0]], dtype=torch.int16)) is None  # nothing before
    share = trace.end_round(torch.tensor([[2, 1, 5, 0], [0, 0, 0, 0]], dtype=torch.int16))
    assert share == pytest.approx(0.5)  # entry 0 same way, entry 1 reversed; 2 and 3 not stepped in both rounds
    assert trace.direction[0].tolist() == [1, 1, 1, 1]  # an entry without a step keeps its last direction
    method, noise, batches, _ = make_batches()
    tr = CraftTrace(noise.delta)
    rec = [phase(method, noise, batches, tr, pgd_steps=3) for _ in range(2)]
    assert rec[0]["sign_consistency"] is None and 0.0 <= rec[1]["sign_consistency"] <= 1.0
    assert tr.direction.abs().sum() > 0


@pytest.mark.parametrize("action", ["abort", "warn"])
def test_a_gate_aborts_with_one_line_or_warns(action, tmp_path):
    gate = {"round": 1, "max_gap": -100.0, "action": action}  # no gap is that low: the gate fails
    attack = ATTACKS.build("cp-class", {**FAST, "gate": gate})
    lines: list[str] = []
    if action == "abort":
        with pytest.raises(ClpoisonError, match=r"loss gap .* at round 1, above the gate's max_gap -100") as e:
            attack.poison(tiny_splits(), seed=0, context=PoisonContext(echo=lines.append, work_dir=tmp_path))
        assert "\n" not in str(e.value) and isinstance(e.value, CraftingNotBootstrapping)
        trace = trace_from_log(tmp_path / "crafting.jsonl")  # what a benchmark records: the stopping round included
        assert trace["rounds"] == [1] and trace["loss_gap"] == [pytest.approx(e.value.gap)] and e.value.round == 1
        return
    res = attack.poison(tiny_splits(), seed=0, context=PoisonContext(echo=lines.append))
    assert any(s.startswith("warning: cp-class crafting is not bootstrapping") for s in lines)
    assert any("loss gap L(x+eps*delta)-L(x)" in s for s in lines)  # the progress line shows the gap
    d = res.manifest["details"]
    assert d["gates"] == [{"round": 1, "max_gap": -100.0, "action": "warn", "passed": 0}]
    assert len(d["trace"]["loss_gap"]) == 2 and d["trace"]["rounds"] == [1, 2] and d["trace"]["sign_consistency"][0] is None
    assert all(isinstance(v, float) for v in d["trace"]["loss_gap"] + d["trace"]["mean_abs_levels"])
    ok = ATTACKS.build("cp-class", {**FAST, "gate": [{"round": 2, "max_gap": 100.0}]}).poison(tiny_splits(), seed=0)
    assert ok.manifest["details"]["gates"][0]["passed"] == 1
    assert np.array_equal(delta_of(ok.artifacts["delta.npz"]), delta_of(res.artifacts["delta.npz"]))  # gates move nothing


@pytest.mark.parametrize("gate, match", [({"round": 0}, "gate.round=0"), ({"action": "stop"}, "abort or warn"),
                                         ({"bogus": 1}, "gate.bogus")])
def test_bad_gates_and_inits_are_one_config_error(gate, match):
    with pytest.raises(ConfigError, match=match):
        ATTACKS.get("cp-sample").Params.from_dict({**FAST, "gate": gate}, "attack.params")
    with pytest.raises(ConfigError, match="init"):
        ATTACKS.get("cp-sample").Params.from_dict({"init": {"attack": "cp-sample"}}, "attack.params")


def test_cp_sample_from_a_cp_class_crafted_first_starts_at_the_class_delta(tmp_path, monkeypatch):
    sp = tiny_splits()
    params = {**FAST, "init": {"attack": "cp-class", "params": CPC}}
    cls = ATTACKS.build("cp-class", {**FAST, **CPC}).poison(tiny_splits(), seed=0)  # the same CP-C, on its own
    class_delta = torch.from_numpy(delta_of(cls.artifacts["delta.npz"]))
    seen = []
    real = cp.craft
    monkeypatch.setattr(cp, "craft", lambda m, noise, *a, **k: seen.append(noise.delta.clone()) or real(m, noise, *a, **k))
    inline = ATTACKS.build("cp-sample", params).poison(sp, seed=0)
    assert len(seen) == 2 and not torch.equal(seen[0], class_delta)  # the CP-C stage itself starts at random
    assert torch.equal(seen[1], class_delta[sp.train.labels])  # CP-S's round 0: each image at its class's δ
    assert inline.artifacts["init_delta.npz"] == cls.artifacts["delta.npz"]
    assert inline.manifest["details"]["init"]["attack"] == "cp-class"
    assert len(inline.manifest["details"]["init"]["trace"]["loss_gap"]) == 2
    (tmp_path / "delta.npz").write_bytes(cls.artifacts["delta.npz"])
    by_path = ATTACKS.build("cp-sample", {**FAST, "init": str(tmp_path)}).poison(tiny_splits(), seed=0)
    assert by_path.artifacts["delta.npz"] == inline.artifacts["delta.npz"]  # one command = the two-step route


def test_two_stage_crafting_resumes_exactly_with_the_diagnostic_state(tmp_path, monkeypatch):
    """Killed in CP-S's round 2 (after the CP-C stage finished): the resume does not craft CP-C again and ends with
    the δ, the loss gaps and the sign consistencies of an uninterrupted crafting."""
    params = {**FAST, "rounds": 3, "init": {"attack": "cp-class", "params": {**CPC, "rounds": 3}}}
    straight = ATTACKS.build("cp-sample", params).poison(tiny_splits(), seed=0, context=PoisonContext(work_dir=tmp_path / "a"))
    real, calls, killed = nc.noise_phase, [], []

    def dying(method, view, noise, *a, **k):
        calls.append("class" if noise.classwise else "sample")
        if not noise.classwise and view.epoch == 2 and not killed:  # the end of CP-S round 2, once: its checkpoint
            killed.append(1)  # is not written
            raise KeyboardInterrupt
        return real(method, view, noise, *a, **k)

    monkeypatch.setattr(nc, "noise_phase", dying)
    with pytest.raises(KeyboardInterrupt):
        ATTACKS.build("cp-sample", params).poison(tiny_splits(), seed=0, context=PoisonContext(work_dir=tmp_path / "b"))
    assert calls == ["class"] * 3 + ["sample"] * 2
    calls.clear()
    resumed = ATTACKS.build("cp-sample", params).poison(tiny_splits(), seed=0, context=PoisonContext(work_dir=tmp_path / "b"))
    assert calls == ["sample"] * 2  # CP-S rounds 2 and 3; the finished CP-C was resumed, not crafted again
    assert resumed.artifacts["delta.npz"] == straight.artifacts["delta.npz"]
    a, b = straight.manifest["details"], resumed.manifest["details"]
    assert a["trace"] == b["trace"] and a["init"]["trace"] == b["init"]["trace"]
    assert a["trace"]["sign_consistency"][2] is not None  # round 3 compares with round 2's restored directions


def test_the_poisoned_probe_is_fitted_on_the_poisoned_images():
    """Rigged: the clean training images carry no class information, the test images and the poison carry a
    class pattern. The clean probe is at chance; the probe fitted on the poisoned images reads the pattern."""
    g = torch.Generator().manual_seed(0)
    n, c = 240, 4
    labels = torch.arange(n) % c
    pattern = (torch.rand(c, 3, 8, 8, generator=g) > 0.5).float() * 120 - 60

    def images(k: int, with_pattern: bool) -> torch.Tensor:
        x = 128 + torch.randint(-50, 51, (k, 3, 8, 8), generator=g).float()
        return (x + pattern[labels[:k]] * with_pattern).clamp(0, 255).to(torch.uint8)

    names = [str(i) for i in range(c)]
    clean = ImageSplits(ImageDataset(images(n, False), labels, names), ImageDataset(images(n, True), labels, names))
    poisoned = ImageSplits(ImageDataset(images(n, True), labels, names), clean.test)
    encoder, tf, settings = torch.nn.Flatten(), EvalTransform(8), EvalConfig(knn_k=5)
    m, extras = evaluate_encoder(encoder, clean, tf, torch.device("cpu"), settings)
    ctx = EvalContext(settings=settings, transform=extras["transform"], test_features=extras["test_features"],
                      poisoned=poisoned, splits=clean, encoder=encoder, device=torch.device("cpu"))
    got = poisoned_probe_metrics(ctx)["linear_top1_poisoned_probe"]
    assert m["linear_top1"] < 0.45 and got > 0.9
    assert ATTACKS.build("cp-class", FAST).evaluate(ctx) == {"linear_top1_poisoned_probe": got}
    assert ATTACKS.build("random-noise", {}).evaluate(ctx) == {"linear_top1_poisoned_probe": got}


def test_the_report_plots_the_crafting_trace_from_the_manifests(tmp_path, monkeypatch):
    import json

    import clpoison.report.figures as figures
    from clpoison.report.aggregate import Setting
    from clpoison.report.collect import Run
    from clpoison.report.figures import crafting_trace

    runs = []
    for seed in (0, 1):
        d = tmp_path / f"cps_s{seed}"
        d.mkdir()
        trace = {"rounds": [1, 2, 3], "loss_gap": [0.0, -0.1 * (seed + 1), float("nan")]}
        man = {"attack": {"name": "cp-sample"}, "details": {"trace": trace, "init": {"attack": "cp-class", "trace": trace}}}
        (d / "manifest.json").write_text(json.dumps(man))
        runs.append(Run(d.name, d, "done", {"config": {"seed": seed}, "metrics": {}}))
    bare = tmp_path / "clean"
    bare.mkdir()
    assert crafting_trace([Setting(("c",), {"Attack": "none"}, [Run("clean", bare, "done", {})])], tmp_path) == []
    figs = crafting_trace([Setting(("cp",), {"Attack": "cp-sample"}, runs)], tmp_path)
    assert [t for t, _ in figs] == ["Contrastive Poisoning crafting trace"] and figs[0][1].stat().st_size > 1000
    seen = {}
    monkeypatch.setattr(figures, "curve_plot", lambda path, curves, *a, **k: seen.update(curves) or path)
    crafting_trace([Setting(("cp",), {"Attack": "cp-sample"}, runs)], tmp_path)
    want = ([1, 2], [0.0, pytest.approx(-0.15)])  # the mean over seeds; a non-finite gap is left out
    assert seen == {"cp-sample (cp-sample)": want, "cp-sample (cp-class stage)": want}
