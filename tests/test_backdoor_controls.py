"""kNN ASR (CTRL's official definition and the non-target variant) against a naive weighted kNN, Δcos, the
mismatched-trigger controls, and the image backdoors' evaluation reporting all of them."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from clpoison.contexts import EvalContext
from clpoison.attacks import ATTACKS
from clpoison.triggers import Trigger
from clpoison.data.datasets import ImageDataset, ImageSplits
from clpoison.eval.attack_metrics import delta_cos, knn_asr, knn_backdoor_by_target
from clpoison.eval.knn import KNNClassifier

WHITE = Trigger({"pattern": "solid", "color": [255, 255, 255], "size": 3, "location": "top-left"})


class Identity:
    """A trigger that changes nothing."""

    def apply(self, images, seed=0, sizes=None):
        return images.clone()


def embed(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.float().flatten(1) - 100.0, dim=1)


def naive_knn(bank: torch.Tensor, bank_labels: torch.Tensor, q: torch.Tensor, k: int, t: float, classes: int) -> list:
    """Weighted kNN one query at a time (official ``knn_predict``): top-k cosine, votes exp(cos / t)."""
    out = []
    for f in q.tolist():
        sims = [sum(a * b for a, b in zip(f, row)) for row in bank.tolist()]
        top = sorted(range(len(sims)), key=lambda i: -sims[i])[:k]
        score = [0.0] * classes
        for i in top:
            score[int(bank_labels[i])] += math.exp(sims[i] / t)
        out.append(max(range(classes), key=lambda c: score[c]))
    return out


def tiny(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    bank_x = torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8, generator=g)
    bank_y = torch.arange(40) % 4
    bank_x[bank_y == 0] = WHITE.apply(bank_x[bank_y == 0])  # the target class carries the patch in the bank
    test_x = torch.randint(0, 256, (24, 3, 8, 8), dtype=torch.uint8, generator=g)
    test_y = torch.arange(24) % 4
    return bank_x, bank_y, test_x, test_y


def test_knn_asr_matches_a_naive_weighted_knn():
    bank_x, bank_y, test_x, test_y = tiny()
    knn = KNNClassifier(k=5, temperature=0.1).fit(embed(bank_x), bank_y, 4)
    m = knn_asr(knn, embed, test_x, test_y, 0, WHITE)
    bank = embed(bank_x)
    trig = torch.tensor(naive_knn(bank, bank_y, embed(WHITE.apply(test_x)), 5, 0.1, 4))
    clean = torch.tensor(naive_knn(bank, bank_y, embed(test_x), 5, 0.1, 4))
    keep = test_y != 0
    assert m["asr_knn_all"] == pytest.approx(float((trig == 0).float().mean()))  # official: every image, target too
    assert m["asr_knn"] == pytest.approx(float((trig[keep] == 0).float().mean()))
    assert m["asr_knn_no_trigger"] == pytest.approx(float((clean[keep] == 0).float().mean()))
    assert m["asr_knn_all_no_trigger"] == pytest.approx(float((clean == 0).float().mean()))
    assert m["asr_knn"] > m["asr_knn_no_trigger"]  # the patch pulls queries to the patched target-class bank


def test_delta_cos_is_zero_for_an_identity_trigger_and_positive_for_a_rigged_encoder():
    bank_x, bank_y, test_x, test_y = tiny()
    assert delta_cos(embed, test_x, test_y, 0, Identity(), embed(bank_x), bank_y) == 0.0

    def rigged(x):  # the encoder reads the top-left pixel: white pulls towards class 0's direction
        w = x[:, 0, 0, 0].float() / 255
        return torch.stack([w, 1.1 - w, torch.full_like(w, 0.1)], 1)

    bank = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).repeat(5, 1)
    labels = torch.tensor([0, 1]).repeat(5)
    black = torch.zeros(6, 3, 8, 8, dtype=torch.uint8)
    d = delta_cos(rigged, black, torch.ones(6, dtype=torch.long), 0, WHITE, bank, labels)
    assert d > 0.9
    assert math.isnan(delta_cos(rigged, black, torch.ones(6, dtype=torch.long), 2, WHITE, bank, labels))  # no rows


def test_knn_asr_and_delta_cos_for_every_target_at_once_match_the_one_target_definitions():
    bank_x, bank_y, test_x, test_y = tiny(1)
    knn = KNNClassifier(k=5, temperature=0.1).fit(embed(bank_x), bank_y, 5)  # class 4 has no bank rows
    got = knn_backdoor_by_target(knn, embed, test_x, test_y, WHITE)
    assert len(got["asr_knn"]) == len(got["delta_cos"]) == 5
    for t in range(4):
        assert got["asr_knn"][t] == pytest.approx(knn_asr(knn, embed, test_x, test_y, t, WHITE)["asr_knn"])
        assert got["delta_cos"][t] == pytest.approx(delta_cos(embed, test_x, test_y, t, WHITE, knn.bank, knn.labels),
                                                    abs=1e-6)
    assert got["asr_knn"][4] == 0.0 and math.isnan(got["delta_cos"][4])
    assert got["asr_knn"][0] > 0 and got["delta_cos"][0] > 0  # the patched target class pulls triggered images
    same = knn_backdoor_by_target(knn, embed, test_x, test_y, Identity())
    assert all(d == 0.0 for d in same["delta_cos"][:4])


def test_mismatched_patch_is_another_patch_of_equal_energy():
    for spec in ({"pattern": "uniform", "size": 6, "seed": 3}, {"pattern": "nlb", "size": 3, "location": "center"},
                 {"pattern": "solid", "color": [255, 255, 255], "size": 4}):
        t = Trigger(spec)
        m = t.mismatched()
        assert m.spec == t.spec and not torch.equal(m.patch, t.patch)
        energy = [float(((p.double() - 127.5) ** 2).sum()) for p in (t.patch, m.patch)]
        assert energy[0] == pytest.approx(energy[1], rel=1e-12)
        x = torch.zeros(2, 3, 16, 16, dtype=torch.uint8)
        assert torch.equal(t.mask(x, 7), m.mask(x, 7))  # same places
    assert Trigger({"pattern": "uniform", "size": 4, "per_image": True}).mismatched() is None


@pytest.mark.parametrize("attack,params", [
    ("ctrl", {"target": "b", "poison_count": 2}),
    ("ssl-backdoor", {"target": "b", "poison_count": 2, "trigger": {"size": 4}}),
])
def test_image_backdoor_eval_reports_knn_asr_delta_cos_and_the_mismatched_control(attack, params):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (48, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.arange(48) % 3
    ds = ImageDataset(x, y, ["a", "b", "c"])
    atk = ATTACKS.build(attack, params)
    knn = KNNClassifier(k=5, temperature=0.1).fit(embed(x), y, 3)
    ctx = EvalContext(splits=ImageSplits(ds, ds), classify=lambda im: knn.predict(embed(im)), embed=embed, knn=knn)
    m = atk.evaluate(ctx)
    for key in ("asr", "ca", "asr_knn", "asr_knn_all", "asr_knn_no_trigger", "delta_cos", "asr_mismatched",
                "asr_knn_mismatched", "asr_knn_all_mismatched", "delta_cos_mismatched", "backdoor_zscore"):
        assert isinstance(m[key], float) and math.isfinite(m[key]), key
    assert m["asr_knn"] == m["asr"]  # here the linear classifier *is* the kNN: one definition of ASR
    assert m["delta_cos"] != m["delta_cos_mismatched"]
    ctx = replace(ctx, knn=None)
    assert "asr_knn" not in atk.evaluate(ctx) and "asr_mismatched" in atk.evaluate(ctx)
