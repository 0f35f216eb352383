import math

import pytest
import torch

from clpoison.triggers import Trigger
from clpoison.eval.attack_metrics import (backdoor_asr, backdoor_metrics, backdoor_zscore, predict, targeted_success,
                                          wilson_interval)

WHITE = Trigger({"pattern": "solid", "color": [255, 255, 255], "size": 2, "location": "top-left"})


def rigged(target, fooled):
    """Predicts ``target`` for triggered images whose index marker (pixel [1,7,7]) is in ``fooled``,
    otherwise the true label stored in pixel [0,7,7]."""
    def classify(x):
        trig = x[:, 0, 0, 0] == 255
        idx = x[:, 1, 7, 7].long()
        out = x[:, 0, 7, 7].long().clone()
        hit = trig & torch.isin(idx, torch.tensor(sorted(fooled)))
        out[hit] = target
        return out
    return classify


def data(labels):
    x = torch.zeros(len(labels), 3, 8, 8, dtype=torch.uint8)
    x[:, 0, 7, 7] = torch.tensor(labels, dtype=torch.uint8)
    x[:, 1, 7, 7] = torch.arange(len(labels), dtype=torch.uint8)
    return x, torch.tensor(labels)


def test_asr_excludes_target_class_images():
    x, y = data([0, 0, 1, 1, 2, 2, 2, 1])  # target 0: 6 non-target images (2..7)
    m = backdoor_asr(rigged(0, {0, 1, 2, 3, 4}), x, y, target=0, trigger=WHITE)
    assert m["asr_n"] == 6 and m["asr_hits"] == 3 and m["asr"] == pytest.approx(0.5)
    m = backdoor_metrics(rigged(0, set(range(8))), x, y, target=0, trigger=WHITE)
    assert m["asr"] == 1.0 and m["asr_clean_accuracy"] == 1.0 and m["asr_no_trigger"] == 0.0
    assert math.isnan(backdoor_asr(rigged(0, set()), x[:2], y[:2], 0, WHITE)["asr"])


@pytest.mark.parametrize("k,n,lo,hi", [(0, 16, 0.0, 0.19361), (15, 16, 0.71671, 0.98888), (8, 16, 0.28000, 0.72000),
                                       (5, 10, 0.23659, 0.76341)])
def test_wilson_known_values(k, n, lo, hi):
    a, b = wilson_interval(k, n)
    assert a == pytest.approx(lo, abs=1e-4) and b == pytest.approx(hi, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_targeted_success():
    x, y = data([0, 1, 2, 1])
    clf = lambda im: torch.tensor([2, 1, 0, 0])
    m = targeted_success(clf, x, [2, 0, 0, 0])
    assert m["targeted_outcomes"] == [True, False, True, True] and m["targeted_success_rate"] == 0.75
    assert m["targeted_ci95"] == list(wilson_interval(3, 4))


def test_targeted_success_against_chance():
    """A classifier that calls every image class 4 'succeeds' on exactly the victims whose adversarial label is 4;
    the chance level says so (one victim × share 1.0), and an honest classifier's chance level is the label
    shares of the reference images."""
    x, _ = data([0, 1, 2, 1])
    ref = torch.zeros(10, 3, 8, 8, dtype=torch.uint8)
    collapsed = lambda im: torch.full((len(im),), 4)
    m = targeted_success(collapsed, x, [4, 0, 1, 2], reference_predictions=predict(collapsed, ref))
    assert m["targeted_successes"] == 1 and m["targeted_label_shares"] == [1.0, 0.0, 0.0, 0.0]
    assert m["targeted_expected_by_chance"] == 1.0
    labels = torch.tensor([0, 0, 1, 3, 3, 3, 3, 3, 3, 3])
    honest = lambda im: labels[: len(im)] if len(im) == 10 else torch.tensor([0, 0, 0, 0])
    m = targeted_success(honest, x, [0, 1, 3, 9], reference_predictions=predict(honest, ref))
    assert m["targeted_label_shares"] == pytest.approx([0.2, 0.1, 0.7, 0.0])
    assert m["targeted_expected_by_chance"] == pytest.approx(1.0) and m["targeted_successes"] == 1
    assert "targeted_expected_by_chance" not in targeted_success(honest, x, [0, 1, 3, 9])


def test_zscore_detects_collapse():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 200, (50, 3, 8, 8), generator=g, dtype=torch.int64).to(torch.uint8)
    proj = torch.randn(192, 16, generator=g)
    honest = lambda im: (im.float().flatten(1) - 100) @ proj
    collapsed = lambda im: honest(im) + 1e4 * (im[:, 0, 0, 0] == 255).float()[:, None]
    z_clean = backdoor_zscore(honest, x, WHITE)
    z_bd = backdoor_zscore(collapsed, x, WHITE)
    assert abs(z_clean) < 2.0 and z_bd > 3.0 and z_bd > z_clean + 2.0  # full collapse gives ~1/std ≈ 4
