"""Augmentation keeps shapes and dtypes, honours its parameters and is reproducible under a seed."""

import kornia
import pytest
import torch

from clpoison.data.augment import (
    AugmentConfig,
    EvalTransform,
    TwoViewAugment,
    adjust_hue,
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
