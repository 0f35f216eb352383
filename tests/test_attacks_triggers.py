import numpy as np
import pytest
import torch
from PIL import Image

from clpoison.triggers import Trigger, TriggerSpec
from clpoison.errors import ConfigError, DataError


def imgs(n=5, h=16, w=16):
    return torch.randint(0, 256, (n, 3, h, w), generator=torch.Generator().manual_seed(1), dtype=torch.int64).to(torch.uint8)


@pytest.mark.parametrize("loc,yx", [("top-left", (0, 0)), ("top-right", (0, 12)), ("bottom-left", (12, 0)),
                                    ("bottom-right", (12, 12))])
def test_corners_land_where_asked(loc, yx):
    t = Trigger({"size": 4, "location": loc})
    x = imgs()
    y = t.apply(x, 0)
    r, c = yx
    assert torch.equal(y[:, :, r:r + 4, c:c + 4], t.patch.expand(5, 3, 4, 4))
    outside = torch.ones(16, 16, dtype=torch.bool)
    outside[r:r + 4, c:c + 4] = False
    assert torch.equal(y[:, :, outside], x[:, :, outside])


def test_fixed_and_four_corners_and_input_untouched():
    x = imgs()
    before = x.clone()
    y = Trigger({"size": 3, "location": "fixed", "xy": [5, 2]}).apply(x)
    assert torch.equal(x, before)
    assert torch.equal(y[:, :, 2:5, 5:8], Trigger({"size": 3}).patch.expand(5, 3, 3, 3))
    m = Trigger({"size": 3, "location": "four-corners"}).mask(x)
    assert int(m[0].sum()) == 4 * 9


def test_random_location_within_image_and_seeded():
    t = Trigger({"size": 5, "location": "random"})
    x = torch.zeros(200, 3, 16, 16, dtype=torch.uint8)
    m1, m2 = t.mask(x, seed=3), t.mask(x, seed=3)
    assert torch.equal(m1, m2) and torch.equal(t.apply(x, 3), t.apply(x, 3))
    assert bool((m1.sum((1, 2)) == 25).all())
    ys = m1.any(2).float().argmax(1)
    assert int(ys.min()) == 0 and int(ys.max()) == 11  # the whole range [0, H - s] is reachable
    y = t.apply(x, 3)
    assert int(((y != x).any(1) & ~m1).sum()) == 0  # nothing changes outside the patch
    assert bool((y.amax(1)[m1] > 0).any())


def test_center_range_bounds():
    t = Trigger({"size": 4, "location": "center-range", "center_range": [0.25, 0.75]})
    m = t.mask(torch.zeros(300, 3, 32, 32, dtype=torch.uint8), seed=0)
    rows, cols = m.any(2), m.any(1)
    assert int(rows.float().argmax(1).min()) >= 8 and int(rows.float().argmax(1).max()) <= 24 - 4
    assert int(cols.float().argmax(1).min()) >= 8 and int(cols.float().argmax(1).max()) <= 24 - 4


def test_same_trigger_at_poison_and_eval_time():
    spec = {"pattern": "gaussian", "size": 4, "seed": 7}
    a, b = Trigger(spec), Trigger(spec)
    assert torch.equal(a.patch, b.patch) and a.sha256() == b.sha256()
    assert not torch.equal(a.patch, Trigger({**spec, "seed": 8}).patch)
    x = imgs()
    m = a.mask(x, 0)
    y = a.apply(x, 0)
    for i in range(len(x)):  # every image carries the identical patch
        assert torch.equal(y[i][:, m[i]].view(3, 4, 4), a.patch)
    # round trip through the manifest entry keeps the exact tensor
    assert torch.equal(Trigger.from_dict(a.to_dict()).patch, a.patch)


def test_per_image_noise_is_an_explicit_option():
    t = Trigger({"pattern": "uniform", "size": 4, "location": "top-left", "per_image": True})
    y = t.apply(torch.zeros(3, 3, 8, 8, dtype=torch.uint8), 0)
    assert not torch.equal(y[0, :, :4, :4], y[1, :, :4, :4])
    with pytest.raises(ConfigError):
        TriggerSpec(pattern="checkerboard", per_image=True)


def test_opacity_blends():
    t = Trigger({"pattern": "solid", "color": [200, 100, 0], "size": 2, "location": "top-left", "opacity": 0.5})
    y = t.apply(torch.zeros(1, 3, 4, 4, dtype=torch.uint8))
    assert y[0, :, 0, 0].tolist() == [100, 50, 0] and int(y[0, :, 3, 3].sum()) == 0


def test_png_trigger(tmp_path):
    arr = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3)
    Image.fromarray(arr).save(tmp_path / "t.png")
    t = Trigger({"pattern": "png", "path": str(tmp_path / "t.png"), "size": 4})
    assert torch.equal(t.patch, torch.from_numpy(arr).permute(2, 0, 1))
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="unreadable"):
        Trigger({"pattern": "png", "path": str(tmp_path / "bad.png"), "size": 4})


def test_errors():
    with pytest.raises(ConfigError, match="larger than"):
        Trigger({"size": 20}).apply(imgs())
    with pytest.raises(ConfigError, match="unknown"):
        TriggerSpec(pattern="stripes")
    with pytest.raises(ConfigError, match="xy"):
        TriggerSpec(location="fixed")
    with pytest.raises(ConfigError, match="outside"):
        Trigger({"size": 4, "location": "fixed", "xy": [14, 0]}).apply(imgs())
