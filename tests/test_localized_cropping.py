"""Localized cropping (CorruptEncoder's defense): the second view lies inside view 1's box enlarged by delta."""

import pytest
import torch

from clpoison.data.augment import AugmentConfig, TwoViewAugment, make_sampler
from clpoison.data.views import VIEW_SAMPLERS, LocalizedCropSampler, enlarge_boxes
from clpoison.defenses import DEFENSES
from clpoison.errors import ConfigError
from clpoison.experiments.config import build_config

EPS = 1e-4


def inside(inner, outer):
    return ((inner[:, 0] >= outer[:, 0] - EPS) & (inner[:, 1] >= outer[:, 1] - EPS)
            & (inner[:, 2] <= outer[:, 2] + EPS) & (inner[:, 3] <= outer[:, 3] + EPS))


@pytest.mark.parametrize("delta", [0.0, 0.1, 0.2, 0.5])
@pytest.mark.parametrize("scale", [(0.2, 1.0), (0.08, 1.0), (0.5, 0.6)])
def test_second_view_inside_enlarged_first_box(delta, scale):
    torch.manual_seed(0)
    sizes = torch.tensor([[32, 32], [32, 64], [18, 64], [7, 13], [224, 224], [400, 800]]).repeat(200, 1)
    s = LocalizedCropSampler(scale, delta=delta, swap=False)
    b1, b2 = s.sample(sizes, 2)
    h, w = sizes[:, 0].float(), sizes[:, 1].float()
    for b in (b1, b2):  # both inside the image, non-degenerate
        assert bool((b[:, 0] >= -EPS).all() and (b[:, 1] >= -EPS).all() and (b[:, 2] <= w + EPS).all() and (b[:, 3] <= h + EPS).all())
        assert bool(((b[:, 2] - b[:, 0]) > 0).all() and ((b[:, 3] - b[:, 1]) > 0).all())
    region = enlarge_boxes(b1, sizes, delta)
    assert bool(inside(b2, region).all())
    # the region is view 1 grown by delta·(w, h) on each side, clipped to the image
    bw, bh = b1[:, 2] - b1[:, 0], b1[:, 3] - b1[:, 1]
    assert torch.allclose(region[:, 0], (b1[:, 0] - delta * bw).clamp(min=0))
    assert torch.allclose(region[:, 3], torch.minimum(b1[:, 3] + delta * bh, h))


def test_swap_keeps_one_view_inside_the_others_enlarged_box():
    torch.manual_seed(1)
    sizes = torch.tensor([[32, 64]]).repeat(500, 1)
    b1, b2 = LocalizedCropSampler(delta=0.2, swap=True).sample(sizes, 2)
    ok = inside(b2, enlarge_boxes(b1, sizes, 0.2)) | inside(b1, enlarge_boxes(b2, sizes, 0.2))
    assert bool(ok.all())
    swapped = ~inside(b2, enlarge_boxes(b1, sizes, 0.2))
    assert 0 < int(swapped.sum()) < 500  # both orders occur


def test_views_are_closer_than_independent_crops():
    torch.manual_seed(2)
    sizes = torch.tensor([[32, 64]]).repeat(2000, 1)

    def centre_dist(b1, b2):
        c1, c2 = (b1[:, :2] + b1[:, 2:]) / 2, (b2[:, :2] + b2[:, 2:]) / 2
        return (c1 - c2).norm(dim=1).mean()

    lc = centre_dist(*LocalizedCropSampler(delta=0.2).sample(sizes, 2))
    ind = centre_dist(*VIEW_SAMPLERS.get("independent")().sample(sizes, 2))
    assert lc < 0.7 * ind


@pytest.mark.parametrize("method", ["simclr", "mocov2", "byol"])
def test_defense_replaces_the_sampler_for_every_two_view_method(method):
    cfg = build_config({"preset": f"{method}-small"}, ["defense.name=localized-cropping", "defense.params.delta=0.3"])
    d = DEFENSES.get("localized-cropping")(DEFENSES.get("localized-cropping").Params.from_dict(cfg.defense.params))
    s = d.view_sampler(cfg.augment)
    assert isinstance(s, LocalizedCropSampler) and s.delta == 0.3 and s.scale == tuple(cfg.augment.crop_scale)
    x = torch.randint(0, 256, (6, 3, 32, 64), dtype=torch.uint8)
    v1, v2 = TwoViewAugment(cfg.augment, s)(x, torch.tensor([[32, 64], [32, 32]] * 3))
    assert v1.shape == v2.shape == (6, 3, cfg.augment.out_size, cfg.augment.out_size)


def test_sampler_registered_and_params_validated():
    s = make_sampler(AugmentConfig(sampler="localized"))
    assert isinstance(s, LocalizedCropSampler) and s.delta == 0.2
    with pytest.raises(ConfigError, match="delta"):
        DEFENSES.get("localized-cropping").Params.from_dict({"delta": -1})
    with pytest.raises(ConfigError, match="unknown key"):
        DEFENSES.get("localized-cropping").Params.from_dict({"size": 1})
