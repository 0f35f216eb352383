"""The CTRL frequency trigger: kornia's YUV in closed form, the official pipeline step by step, DCT against SciPy,
exact removal before rounding, the OpenCV YCrCb option and legacy manifests, and the mismatched-frequency control."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from clpoison.triggers.frequency import (CTRLSpec, FrequencyTrigger, _blockwise, converters, ctrl_apply,
                                                ctrl_float, ctrl_remove, dct_matrix, mismatched_frequencies,
                                                rgb_to_ycrcb, rgb_to_yuv, ycrcb_to_rgb, yuv_to_rgb)
from clpoison.triggers import trigger_from_dict
from clpoison.errors import ConfigError


def images(n: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def kornia_rgb_to_yuv(x: torch.Tensor) -> torch.Tensor:
    """``kornia.color.rgb_to_yuv`` as kornia writes it (0.6.5 and later), channel by channel."""
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    return torch.stack([0.299 * r + 0.587 * g + 0.114 * b, -0.147 * r - 0.289 * g + 0.436 * b,
                        0.615 * r - 0.515 * g - 0.100 * b], 1)


def kornia_yuv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    y, u, v = x[:, 0], x[:, 1], x[:, 2]
    return torch.stack([y + 1.14 * v, y + -0.396 * u - 0.581 * v, y + 2.029 * u], 1)


def test_yuv_is_kornias_closed_form_including_its_inexact_inverse():
    x = images().double()
    assert torch.allclose(rgb_to_yuv(x), kornia_rgb_to_yuv(x), atol=1e-10)
    z = torch.randn(2, 3, 8, 8, dtype=torch.float64) * 100
    assert torch.allclose(yuv_to_rgb(z), kornia_yuv_to_rgb(z), atol=1e-10)
    drift = (yuv_to_rgb(rgb_to_yuv(x)) - x).abs().max()
    assert 0.05 < float(drift) < 0.4  # kornia's rounded inverse: as in the official code, not the identity


def test_trigger_is_the_official_pipeline_step_by_step():
    """``PoisonFre.Poison_Frequency_Diff`` with ``rgb2yuv=True``: x·255 → rgb_to_yuv → ortho DCT per window →
    +magnitude at (15,15) and (31,31) of U and V → IDCT → yuv_to_rgb; written here with SciPy's DCT."""
    from scipy.fft import dctn, idctn

    x = images(2, 64)
    yuv = kornia_rgb_to_yuv(x.double()).numpy()
    for i in range(2):
        for ch in (1, 2):
            for r in (0, 32):
                for c in (0, 32):
                    coef = dctn(yuv[i, ch, r:r + 32, c:c + 32], type=2, norm="ortho")
                    coef[15, 15] += 100.0
                    coef[31, 31] += 100.0
                    yuv[i, ch, r:r + 32, c:c + 32] = idctn(coef, type=2, norm="ortho")
    want = kornia_yuv_to_rgb(torch.from_numpy(yuv))
    assert torch.allclose(ctrl_float(x, 100.0), want, atol=1e-9)
    assert torch.equal(ctrl_apply(x, 100.0), want.clamp(0, 255).round().to(torch.uint8))  # rounded once, at the end


def test_dct_is_scipys_orthonormal_dct2():
    from scipy.fft import dctn

    x = np.random.default_rng(0).normal(size=(8, 8))
    d = dct_matrix(8)
    assert np.allclose((d @ torch.from_numpy(x) @ d.t()).numpy(), dctn(x, type=2, norm="ortho"))
    assert torch.allclose(d @ d.t(), torch.eye(8, dtype=d.dtype))


def test_opencv_ycrcb_conversion_inverts():
    x = images().double()
    y = rgb_to_ycrcb(x)
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    luma = 0.299 * r + 0.587 * g + 0.114 * b
    assert torch.allclose(y[:, 0], luma) and torch.allclose(y[:, 1], (r - luma) * 0.713 + 128)
    assert torch.allclose(ycrcb_to_rgb(y), x)


@pytest.mark.parametrize("color", ["yuv", "ycrcb"])
def test_trigger_adds_the_magnitude_and_is_removable_before_rounding(color):
    x = images(size=64)
    y = ctrl_float(x, 50.0, window=32, color=color)
    back = ctrl_remove(y, 50.0, window=32, color=color)
    assert (back - x.double()).abs().max() < 1e-5  # apply, then subtract in float: the input again
    to, _ = converters(color)
    inv_to, _ = converters(color, inverse=True)  # undoes the last step of ctrl_float exactly
    d = dct_matrix(32)
    delta = _blockwise(inv_to(y)[:, 1:], d, False) - _blockwise(to(x.double())[:, 1:], d, False)
    want = torch.zeros(32, 32, dtype=torch.float64)
    want[15, 15] = want[31, 31] = 50.0
    assert torch.allclose(delta, want.repeat(2, 2).expand_as(delta), atol=1e-9)
    assert torch.allclose(inv_to(y)[:, 0], to(x.double())[:, 0], atol=1e-9)  # Y untouched
    assert not torch.equal(ctrl_apply(x, 50.0, color="yuv"), ctrl_apply(x, 50.0, color="ycrcb"))


def test_uint8_trigger_is_deterministic_bounded_and_leaves_the_input_alone():
    x = images()
    before = x.clone()
    a, b = ctrl_apply(x, 100.0), ctrl_apply(x, 100.0, chunk=1)
    assert torch.equal(a, b) and torch.equal(x, before) and a.dtype == torch.uint8 and not torch.equal(a, x)
    mid = torch.randint(30, 226, (3, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    back = ctrl_remove(ctrl_apply(mid, 100.0).double(), 100.0)  # no clamping in mid-range: only the rounding
    assert (back - mid.double()).abs().max() < 2
    with pytest.raises(ConfigError, match="window"):
        ctrl_apply(images(size=30), 100.0)
    with pytest.raises(ConfigError, match="frequencies"):
        ctrl_apply(x, 100.0, positions=((32, 0),))
    with pytest.raises(ConfigError, match="color"):
        CTRLSpec(color="hsv")


def test_spec_records_the_colour_and_legacy_manifests_read_as_ycrcb():
    t = FrequencyTrigger()
    assert t.spec.color == "yuv" and t.to_dict()["spec"]["color"] == "yuv"
    assert torch.equal(trigger_from_dict(json.loads(json.dumps(t.to_dict()))).patch, t.patch)
    old = FrequencyTrigger({"color": "ycrcb"}).to_dict()
    del old["spec"]["color"]  # a manifest written before `color` existed
    assert trigger_from_dict(old).spec.color == "ycrcb"


def test_mismatched_frequencies_have_the_same_energy_elsewhere():
    assert mismatched_frequencies(32, ((15, 15), (31, 31))) == ((15, 31), (31, 15))
    other = mismatched_frequencies(4, ((0, 2), (1, 1), (1, 3)))
    assert len(set(other)) == 3 and not set(other) & {(0, 2), (1, 1), (1, 3), (0, 0)}
    assert mismatched_frequencies(1, ((0, 0),)) is None
    t = FrequencyTrigger({"magnitude": 60})
    m = t.mismatched()
    assert m.spec.frequencies == ((15, 31), (31, 15)) and m.spec.magnitude == 60 and m.spec.color == "yuv"
    x = images(size=64)
    base = ctrl_float(x, 0.0)  # the colour round trip alone
    e1 = (ctrl_float(x, 60.0) - base).norm()
    e2 = (ctrl_float(x, 60.0, positions=m.spec.frequencies) - base).norm()
    assert torch.allclose(e1, e2, rtol=1e-9) and float(e1) > 100
    grey = torch.full((1, 3, 32, 32), 128, dtype=torch.uint8)
    d1, d2 = ((tr.apply(grey).double() - 128).norm() for tr in (t, m))
    assert abs(float(d1 - d2)) / float(d1) < 0.05 and not torch.equal(t.apply(grey), m.apply(grey))
