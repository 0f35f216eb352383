"""The CTRL frequency trigger: DCT against SciPy, colour conversion against OpenCV's formulas, exact removal."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clpoison.attacks.frequency_trigger import (_blockwise, ctrl_apply, ctrl_float, ctrl_remove, dct_matrix,
                                                rgb_to_ycrcb, ycrcb_to_rgb)
from clpoison.errors import ConfigError


def images(n: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_dct_is_scipys_orthonormal_dct2():
    from scipy.fft import dctn

    x = np.random.default_rng(0).normal(size=(8, 8))
    d = dct_matrix(8)
    assert np.allclose((d @ torch.from_numpy(x) @ d.t()).numpy(), dctn(x, type=2, norm="ortho"))
    assert torch.allclose(d @ d.t(), torch.eye(8, dtype=d.dtype))


def test_colour_conversion_is_opencvs_and_inverts():
    x = images().double()
    y = rgb_to_ycrcb(x)
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    luma = 0.299 * r + 0.587 * g + 0.114 * b
    assert torch.allclose(y[:, 0], luma) and torch.allclose(y[:, 1], (r - luma) * 0.713 + 128)
    assert torch.allclose(ycrcb_to_rgb(y), x)


def test_trigger_adds_the_magnitude_at_the_chosen_coefficients_and_is_removable():
    x = images(size=64)
    y = ctrl_float(x, 50.0, window=32)
    d = dct_matrix(32)
    delta = _blockwise(rgb_to_ycrcb(y)[:, 1:], d, False) - _blockwise(rgb_to_ycrcb(x.double())[:, 1:], d, False)
    want = torch.zeros(32, 32, dtype=torch.float64)
    want[15, 15] = want[31, 31] = 50.0
    assert torch.allclose(delta, want.repeat(2, 2).expand_as(delta), atol=1e-9)
    assert torch.allclose(ctrl_remove(y, 50.0, window=32), x.double(), atol=1e-9)
    assert torch.allclose(rgb_to_ycrcb(y)[:, 0], rgb_to_ycrcb(x.double())[:, 0], atol=1e-9)  # Y untouched


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
