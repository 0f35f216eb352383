"""Contrastive Poisoning: the noise budget, the gradient through the augmentation, descent, CP-S/CP-C shapes,
untouched source data, exact resume, the random-noise control and bad input (tiny tensors; the CLI run is slow)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from clpoison.attacks import ATTACKS
from clpoison.attacks.cp.noise_crafting import CraftSettings, PoisonedViews, PoisonNoise, craft, noise_step
from clpoison.engine.surrogate import Surrogate
from clpoison.data.augment import AugmentConfig, TwoViewAugment
from clpoison.data.datasets import ImageDataset, ImageSplits
from clpoison.errors import ClpoisonError, ConfigError

TINY = {"model": {"arch": "convnet", "width": 8}, "method": {"name": "simclr", "params": {"proj_dim": 16}}}
FAST = {"rounds": 2, "model_steps": 2, "noise_steps": 2, "pgd_steps": 2, "batch_size": 32, "attacker": TINY}


def tiny_splits(n: int = 96, size: int = 16, seed: int = 0) -> ImageSplits:
    g = torch.Generator().manual_seed(seed)
    ds = ImageDataset(torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g), torch.arange(n) % 4,
                      ["a", "b", "c", "d"])
    return ImageSplits(ds, ds)


def load_delta(art: bytes) -> dict:
    with np.load(io.BytesIO(art), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@pytest.mark.parametrize("name, rows", [("cp-sample", 96), ("cp-class", 4)])
def test_budget_shapes_and_untouched_source(name, rows):
    sp = tiny_splits()
    before = sp.train.images.clone()
    res = ATTACKS.build(name, FAST).poison(sp, seed=0)
    assert torch.equal(sp.train.images, before)  # the source is never modified
    out = res.splits.train.images
    assert out.dtype == torch.uint8 and out.shape == before.shape and torch.equal(res.splits.train.labels, sp.train.labels)
    assert int((out.int() - before.int()).abs().max()) <= round(255 * 8 / 255)  # |δ| ≤ ε after quantisation
    assert not torch.equal(out, before)
    d = load_delta(res.artifacts["delta.npz"])
    assert d["delta"].shape == (rows, 3, 16, 16) and bool(d["classwise"]) == (name == "cp-class")
    assert np.abs(d["delta"]).max() <= 1.0  # δ in [−1, 1] after every step, so |ε·δ| ≤ ε
    if name == "cp-class":  # one pattern per class: images of a class moved by the same noise (up to clipping)
        diff = out.int() - before.int()
        mid = (before > 10) & (before < 245)
        same = (diff[0] == diff[4]) | ~(mid[0] & mid[4])
        assert bool(same.all())
    man = res.manifest
    assert man["poisoned_indices"] == list(range(96)) and man["details"]["rounds"] == 2
    assert man["details"]["delta_sha256"] and len(man["details"]["history"]) == 2


def make_batches(n: int = 32, double: bool = False, epsilon: float = 8 / 255):
    torch.manual_seed(0)
    sp = tiny_splits(n)
    method = Surrogate.from_dict(TINY, "attacker").build_method().eval()
    noise = PoisonNoise(n, (3, 16, 16), epsilon, None, torch.Generator().manual_seed(1))
    if double:
        method, noise = method.double(), noise.double()
    aug = TwoViewAugment(AugmentConfig(out_size=16))
    return method, noise, PoisonedViews(sp.train.images, noise, aug, 16, 2, 0), sp


def test_noise_gradient_flows_through_the_augmentation_and_matches_finite_differences():
    method, noise, batches, _ = make_batches(double=True, epsilon=0.25)  # a large ε: a measurable loss change
    idx = torch.arange(16)
    x = batches.images[idx].double().div(255)

    def loss_at(d: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(7)  # the same augmentation draws at every evaluation
        xp = noise.poison(x, idx, d)
        return method.loss({"views": batches.views(xp)})[0]

    d0 = noise.delta.clone().mul_(0.5).requires_grad_(True)  # away from the ±1 clamp
    (g,) = torch.autograd.grad(loss_at(d0), [d0])
    assert torch.isfinite(g).all() and g[idx].abs().sum() > 0 and g[16:].abs().sum() == 0
    v = torch.randn_like(d0)
    v[16:] = 0
    h = 1e-6
    with torch.no_grad():
        fd = (loss_at(d0 + h * v) - loss_at(d0 - h * v)) / (2 * h)
    assert float(fd) == pytest.approx(float((g * v).sum()), rel=1e-3)


def test_a_noise_step_lowers_the_loss_of_its_batch():
    method, noise, batches, _ = make_batches()
    idx = torch.arange(16)
    settings = CraftSettings(pgd_steps=1, step_size=0.1, batch_size=16)

    def loss_now() -> float:
        torch.manual_seed(3)
        with torch.no_grad():
            xp = noise.poison(batches.images[idx].float().div(255), idx)
            return float(method.loss({"views": batches.views(xp)})[0])

    before = loss_now()
    torch.manual_seed(3)
    noise_step(method, noise, batches, idx, settings)
    after = loss_now()
    assert after < before
    assert noise.delta.abs().max() <= 1


def test_class_wise_step_updates_one_row_per_class_present():
    _, _, batches, sp = make_batches()
    method = Surrogate.from_dict(TINY, "attacker").build_method().eval()
    noise = PoisonNoise(4, (3, 16, 16), 8 / 255, sp.train.labels, torch.Generator().manual_seed(1))
    batches.noise = noise
    before = noise.delta.clone()
    idx = torch.tensor([0, 4, 8, 1])  # classes 0 and 1 only
    noise_step(method, noise, batches, idx, CraftSettings(pgd_steps=1, batch_size=4))
    changed = [(noise.delta[c] != before[c]).any().item() for c in range(4)]
    assert changed == [True, True, False, False]


def test_crafting_resumes_exactly(tmp_path):
    sp = tiny_splits(64)
    s = CraftSettings(rounds=3, model_steps=2, noise_steps=2, pgd_steps=1, batch_size=16)

    def setup():
        torch.manual_seed(0)
        sur = Surrogate.from_dict(TINY, "attacker")
        noise = PoisonNoise(64, (3, 16, 16), 8 / 255, None, torch.Generator().manual_seed(0))
        return sur.build_method(), noise, TwoViewAugment(sur.augment_config()), sur.train_config(3, 16, progress=False)

    m, noise, aug, tc = setup()
    straight = craft(m, noise, sp.train.images, aug, s, tc, torch.device("cpu"), 0, tmp_path / "a", {"k": 1})
    want = noise.delta.clone()

    m, noise, aug, tc = setup()
    import clpoison.attacks.cp.noise_crafting as nc

    real = nc.noise_phase

    def dying(method, view, *a, **k):
        if view.epoch == 2:  # the end of round 2: its checkpoint is not written yet
            raise KeyboardInterrupt
        return real(method, view, *a, **k)

    nc.noise_phase = dying
    try:
        with pytest.raises(KeyboardInterrupt):
            craft(m, noise, sp.train.images, aug, s, tc, torch.device("cpu"), 0, tmp_path / "b", {"k": 1})
    finally:
        nc.noise_phase = real
    m, noise, aug, tc = setup()
    resumed = craft(m, noise, sp.train.images, aug, s, tc, torch.device("cpu"), 0, tmp_path / "b", {"k": 1})
    assert torch.equal(noise.delta, want)
    key = ("loss", "noise_loss_first", "noise_loss_last")
    assert [[h[k] for k in key] for h in resumed] == [[h[k] for k in key] for h in straight]


def test_random_noise_control_is_uniform_within_the_budget():
    sp = tiny_splits()
    out = ATTACKS.build("random-noise", {}).poison(sp, seed=0).splits.train.images
    diff = out.int() - sp.train.images.int()
    assert int(diff.abs().max()) <= 8 and float(diff.float().abs().mean()) > 2


@pytest.mark.parametrize("params, match", [
    ({"epsilon": 0}, "epsilon"), ({"epsilon": 1.5}, "epsilon"), ({"rounds": 0}, "rounds"),
    ({"pgd_steps": -1}, "pgd_steps"), ({"step_size": 0}, "step_size"),
    ({"attacker": {"method": {"name": "clip"}}}, "not an image contrastive method"),
    ({"attacker": {"train": {"epochs": 3}}}, "attacker.train.epochs"),
    ({"attacker": {"bogus": 1}}, "attacker.bogus"),
    ({"attacker": {"model": {"widht": 8}}}, "attacker.model.widht"),
    ({"attacker": {"model": {"arch": "vit"}}}, "attacker.model.arch"),
    ({"attacker": {"model": {"width": 0}}}, "attacker.model.width"),
    ({"init": "/nonexistent/delta.npz"}, "init"),
])
def test_bad_params_are_one_config_error(params, match):
    with pytest.raises(ConfigError, match=match):
        ATTACKS.get("cp-sample").Params.from_dict(params, "attack.params")


def test_class_wise_needs_labels_and_init_needs_a_class_delta(tmp_path):
    sp = tiny_splits()
    sp.train.labels = torch.full_like(sp.train.labels, -1)
    with pytest.raises(ClpoisonError, match="class label"):
        ATTACKS.build("cp-class", FAST).poison(sp, seed=0)
    sample = ATTACKS.build("cp-sample", FAST).poison(tiny_splits(), seed=0)
    (tmp_path / "delta.npz").write_bytes(sample.artifacts["delta.npz"])
    with pytest.raises(ConfigError, match="class-wise"):
        ATTACKS.build("cp-sample", {**FAST, "init": str(tmp_path)}).poison(tiny_splits(), seed=0)


def test_cp_sample_starts_from_a_cp_class_result(tmp_path):
    cls = ATTACKS.build("cp-class", {**FAST, "rounds": 1}).poison(tiny_splits(), seed=0)
    (tmp_path / "delta.npz").write_bytes(cls.artifacts["delta.npz"])
    start = ATTACKS.build("cp-sample", {**FAST, "rounds": 1, "pgd_steps": 1, "noise_steps": 1, "init": str(tmp_path)})
    res = start.poison(tiny_splits(), seed=0)
    d, c = load_delta(res.artifacts["delta.npz"])["delta"], load_delta(cls.artifacts["delta.npz"])["delta"]
    # one noise batch of 32 images was updated; the other images still hold their class's δ exactly
    labels = np.arange(96) % 4
    untouched = [i for i in range(96) if np.array_equal(d[i], c[labels[i]])]
    assert len(untouched) >= 96 - 32


@pytest.mark.slow
def test_cp_run_and_export_through_the_cli(tmp_path, capsys):
    from clpoison.cli import main

    common = ["data.train_limit=256", "data.test_limit=128", "train.epochs=1", "train.batch_size=64", "model.width=8",
              "attack.params.rounds=2", "attack.params.batch_size=64", "attack.params.pgd_steps=1",
              "attack.params.attacker.model.width=8", "eval.knn_k=10", "attack.params.init.params.rounds=1",
              "attack.params.init.params.model_steps=2", "attack.params.init.params.noise_steps=2"]
    (tmp_path / "cp.yaml").write_text("preset: cp-sample-small\n")
    assert main(["run", str(tmp_path / "cp.yaml"), *common, "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    res = __import__("json").loads((tmp_path / "run" / "results.json").read_text())
    assert {"knn_top1", "linear_top1", "knn_top1_random_init", "linear_top1_random_init",
            "linear_top1_poisoned_probe"} <= set(res["metrics"])
    assert all((tmp_path / "run" / f).exists() for f in ("delta.npz", "init_delta.npz", "manifest.json"))
    out = tmp_path / "exp"
    assert main(["poison", "cp-class", "--data", "cifar10-subset", "--out", str(out), "--preset", "cp-class-small",
                 "rounds=1", "model_steps=2", "noise_steps=2", "attacker.model.width=8", "--no-progress"]) == 0
    assert (out / "data.npz").exists() and (out / "delta.npz").exists() and not (tmp_path / ".exp.craft").exists()
    assert main(["poison", "cp-sample", "--data", "cifar10-subset", "--out", str(tmp_path / "bad"), "epsilon=2"]) == 2
    assert not (tmp_path / "bad").exists() and "epsilon" in capsys.readouterr().err


def test_model_phase_stream_continues_across_rounds_in_seeded_passes():
    """Batch k of the stream is position k mod B of pass k div B of the seeded per-pass permutation."""
    from clpoison.data.loader import epoch_permutation

    _, _, batches, _ = make_batches(n=32)  # batch 16: B = 2 batches per pass
    got = [batches.indices(k) for k in range(5)]
    want = [epoch_permutation(32, 0, k // 2)[(k % 2) * 16:(k % 2 + 1) * 16] for k in range(5)]
    assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_poison_or_reuse_makes_an_export_once(tmp_path):
    from clpoison.experiments.poison import poison_or_reuse

    out = tmp_path / "rn"
    man = poison_or_reuse("random-noise", {"epsilon": 4 / 255}, "cifar10-subset", out, seed=1, device="cpu")
    stamp = (out / "data.npz").stat().st_mtime_ns
    assert poison_or_reuse("random-noise", {"epsilon": 4 / 255}, "cifar10-subset", out, seed=1, device="cpu") == man
    assert (out / "data.npz").stat().st_mtime_ns == stamp  # reused, not rewritten
    other = poison_or_reuse("random-noise", {"epsilon": 2 / 255}, "cifar10-subset", out, seed=1, device="cpu")
    assert other["params"]["epsilon"] == 2 / 255 and (out / "data.npz").stat().st_mtime_ns != stamp
