"""Augmentation keeps shapes and dtypes, honours its parameters and is reproducible under a seed."""

import kornia
import pytest
import torch
from torch.overrides import TorchFunctionMode

from clpoison.data import augment as augment_module
from clpoison.data.augment import (
    AugmentConfig,
    EvalTransform,
    TwoViewAugment,
    ViewAugment,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    crop_resize_flip,
)
from clpoison.data.views import IndependentRRCSampler, sample_rrc_boxes
from clpoison.errors import ConfigError


@pytest.mark.parametrize("preset", ["simclr", "mocov2", "byol"])
def test_two_views_shapes_and_dtype(preset, tiny_images):
    aug = TwoViewAugment(AugmentConfig.preset(preset, out_size=24))
    v1, v2 = aug(tiny_images)
    assert v1.shape == v2.shape == (16, 3, 24, 24)
    assert v1.dtype == torch.float32
    assert torch.isfinite(v1).all() and not torch.equal(v1, v2)


def test_reproducible_under_seed(tiny_images):
    aug = TwoViewAugment(AugmentConfig.preset("byol"))
    torch.manual_seed(5)
    a = aug(tiny_images)
    torch.manual_seed(5)
    b = aug(tiny_images)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_rrc_boxes_respect_scale_ratio_and_bounds():
    torch.manual_seed(0)
    sizes = torch.tensor([[32, 32]] * 2000 + [[32, 64]] * 2000)
    boxes = sample_rrc_boxes(sizes, (0.3, 0.6), (3 / 4, 4 / 3))
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    area = (w * h) / (sizes[:, 0] * sizes[:, 1])
    assert area.min() >= 0.3 - 1e-4 and area.max() <= 0.6 + 1e-4
    assert (w / h).min() >= 3 / 4 - 1e-4 and (w / h).max() <= 4 / 3 + 1e-4
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= sizes[:, 1] + 1e-4).all() and (boxes[:, 3] <= sizes[:, 0] + 1e-4).all()
    # crops of the wide images do reach their right half
    assert (boxes[2000:, 2] > 40).any()


def test_full_box_is_identity_and_flip_mirrors():
    x = torch.rand(2, 3, 8, 8)
    box = torch.tensor([[0.0, 0.0, 8.0, 8.0]] * 2)
    assert torch.allclose(crop_resize_flip(x, box, (8, 8)), x, atol=1e-5)
    flipped = crop_resize_flip(x, box, (8, 8), torch.tensor([True, False]))
    assert torch.allclose(flipped[0], x[0].flip(-1), atol=1e-5)
    assert torch.allclose(flipped[1], x[1], atol=1e-5)


def test_crop_takes_the_right_region():
    x = torch.zeros(1, 3, 8, 16)
    x[..., 8:] = 1.0  # right half white
    right = crop_resize_flip(x, torch.tensor([[8.0, 0.0, 16.0, 8.0]]), (4, 4))
    left = crop_resize_flip(x, torch.tensor([[0.0, 0.0, 8.0, 8.0]]), (4, 4))
    assert torch.allclose(right, torch.ones_like(right)) and torch.allclose(left, torch.zeros_like(left))


def test_hue_matches_hsv_reference():
    x = torch.rand(4, 3, 8, 8)
    shift = torch.tensor([-0.1, 0.05, 0.3, -0.45])
    hsv = kornia.color.rgb_to_hsv(x)
    hsv[:, 0] = torch.remainder(hsv[:, 0] + shift.view(-1, 1, 1) * 2 * torch.pi, 2 * torch.pi)
    ref = kornia.color.hsv_to_rgb(hsv)
    assert torch.allclose(adjust_hue(x, shift), ref, atol=1e-4)


def test_no_augmentation_preset_is_normalised_identity(tiny_images):
    cfg = AugmentConfig.preset("none")
    v1, _ = TwoViewAugment(cfg)(tiny_images)
    assert torch.allclose(v1, EvalTransform(32)(tiny_images), atol=1e-4)


def test_variable_size_canvas_crops_stay_inside_valid_area():
    canvas = torch.zeros(2, 3, 32, 64, dtype=torch.uint8)
    canvas[0, :, :, :32] = 255  # image 0 is 32x32 white in a 32x64 canvas padded with black
    sizes = torch.tensor([[32, 32], [32, 64]])
    cfg = AugmentConfig.preset("none", crop_scale=(0.2, 1.0), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    for _ in range(20):
        v1, v2 = TwoViewAugment(cfg)(canvas, sizes)
        assert torch.allclose(v1[0], torch.ones_like(v1[0]), atol=1e-5)  # never sees the padding


def test_bad_augment_values_raise():
    with pytest.raises(ConfigError, match="jitter_p"):
        AugmentConfig(jitter_p=1.5)
    with pytest.raises(ConfigError, match="crop_scale"):
        IndependentRRCSampler(scale=(0.8, 0.2))


# ----------------------------------------------------------------------------------------------------------------
# differentiable path (float input that requires grad)

GRAD_PRESETS = ["simclr", "mocov2", "byol"]
# every op on, with partial subsets for grayscale / blur / solarisation (exercises _apply_subset's index_put)
ALL_OPS = dict(jitter_p=1.0, gray_p=0.5, blur_p=(1.0, 0.5), solarize_p=(1.0, 0.5))


def _cfg(name: str, out_size: int) -> AugmentConfig:
    if name == "all":
        return AugmentConfig(out_size=out_size, **ALL_OPS)
    return AugmentConfig.preset(name, out_size=out_size)


def _seeded(aug, seed: int, sizes=None):
    """``aug`` with the generator re-seeded on every call, so each evaluation draws the same random factors."""

    def f(x):
        torch.manual_seed(seed)
        return aug(x, sizes)

    return f


def _smooth_input(n: int = 2, size: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, size, size, generator=g, dtype=torch.float64) * 0.8 + 0.1).requires_grad_()


@pytest.mark.parametrize("preset", GRAD_PRESETS)
def test_views_have_gradients_wrt_float_input(preset, tiny_images):
    aug = TwoViewAugment(AugmentConfig.preset(preset, out_size=24))
    x = (tiny_images.float() / 255).requires_grad_()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        v1, v2 = aug(x)
        w1, w2 = torch.randn_like(v1), torch.randn_like(v2)
    assert v1.requires_grad and v2.requires_grad
    ((v1 * w1).sum() + (v2 * w2).sum()).backward()
    assert torch.isfinite(x.grad).all()
    assert (x.grad.abs().flatten(1).sum(1) > 0).all()  # every image gets a gradient from its views


@pytest.mark.parametrize("name", GRAD_PRESETS + ["all"])
def test_gradient_matches_finite_differences(name):
    # float64, inputs away from the clamp bounds; fast mode checks a random directional derivative
    # (central difference) against the analytic vector-Jacobian product of both views.
    aug = TwoViewAugment(_cfg(name, 8))
    with torch.random.fork_rng():
        assert torch.autograd.gradcheck(_seeded(aug, 3), (_smooth_input(4),), fast_mode=True)


def test_gradient_check_catches_a_detach(monkeypatch):
    aug = TwoViewAugment(_cfg("all", 8))
    monkeypatch.setattr(augment_module, "adjust_saturation", lambda x, f: adjust_saturation(x.detach(), f))
    with torch.random.fork_rng():
        ok = torch.autograd.gradcheck(_seeded(aug, 3), (_smooth_input(4),), fast_mode=True, raise_exception=False)
    assert not ok


@pytest.mark.parametrize("op", [adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue])
def test_colour_ops_gradcheck(op):
    f = torch.tensor([0.7, 1.3], dtype=torch.float64) if op is not adjust_hue else torch.tensor([-0.08, 0.05])
    assert torch.autograd.gradcheck(lambda x: op(x, f), (_smooth_input(2, 4),))


@pytest.mark.parametrize("name", GRAD_PRESETS + ["all"])
def test_float_grad_path_matches_uint8_path(name, tiny_images):
    aug = TwoViewAugment(_cfg(name, 24))
    canvas = tiny_images[:8, :, :, :24].contiguous()
    sizes = torch.tensor([[32, 24], [24, 24], [32, 16], [20, 24]] * 2)
    for images, sz in ((tiny_images, None), (canvas, sizes)):
        for seed in (0, 1):
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                ref = aug(images, sz)
                after_ref = torch.rand(3)  # the same amount of random numbers was drawn
                torch.manual_seed(seed)
                out = aug((images.float() / 255).requires_grad_(), sz)
                after_out = torch.rand(3)
            assert torch.equal(after_ref, after_out)
            for a, b in zip(ref, out):
                assert b.requires_grad
                torch.testing.assert_close(b.detach(), a, atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", ["uint8", "float", "float_grad"])
def test_augment_does_not_modify_input(kind, tiny_images):
    x = tiny_images if kind == "uint8" else tiny_images.float() / 255
    if kind == "float_grad":
        x.requires_grad_()
    before, version = x.detach().clone(), x._version
    TwoViewAugment(AugmentConfig(out_size=32, **ALL_OPS))(x)
    assert torch.equal(x.detach(), before) and x._version == version
    if kind == "float_grad":  # ViewAugment on its own leaves a view that requires grad untouched too
        ViewAugment(AugmentConfig(**ALL_OPS), 0)(x)
        assert torch.equal(x.detach(), before) and x._version == version


class _InplaceOnGraph(TorchFunctionMode):
    """Records in-place torch calls (``op_``, item assignment) whose target tensor requires grad."""

    def __init__(self) -> None:
        super().__init__()
        self.hits: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        inplace = name == "__setitem__" or (name.endswith("_") and not name.endswith("__"))
        if inplace and args and isinstance(args[0], torch.Tensor) and args[0].requires_grad:
            self.hits.append(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", GRAD_PRESETS + ["all"])
def test_no_inplace_op_touches_the_graph(name, tiny_images):
    aug = TwoViewAugment(_cfg(name, 24))
    sizes = torch.tensor([[32, 32], [32, 24]] * 8)
    for sz in (None, sizes):
        x = (tiny_images.float() / 255).requires_grad_()
        with torch.random.fork_rng(), _InplaceOnGraph() as mode:
            torch.manual_seed(0)
            aug(x, sz)
        assert mode.hits == []
    with _InplaceOnGraph() as mode:  # the detector does see an in-place op on a graph tensor
        (torch.rand(2, requires_grad=True) * 1.0).mul_(2.0)
        torch.rand(2).mul_(2.0)
    assert mode.hits == ["mul_"]
