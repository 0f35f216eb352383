"""No-Label Backdoors and CTRL as attacks: the trigger types, the poisoning step, the manifest, the attacker's
feature sources, bad input, and an end-to-end CLI run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from clpoison.contexts import EvalContext, PoisonContext
from clpoison.attacks import ATTACKS
from clpoison.triggers.frequency import ctrl_float, ctrl_remove
from clpoison.poisoned.manifest import load_trigger
from clpoison.attacks.nlb.nlb import NLB
from clpoison.triggers import build_trigger, trigger_from_dict
from clpoison.data.datasets import ImageDataset, ImageSplits
from clpoison.errors import ConfigError, DataError

from cli_inprocess import clpoison_here


def splits(n: int = 120, size: int = 32, seed: int = 0) -> ImageSplits:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    ds = ImageDataset(x, torch.arange(n) % 4, ["a", "b", "c", "d"], "tiny")
    return ImageSplits(ds, ds.subset(range(40), "tiny-test"))


def rigged_features(labels: torch.Tensor, dim: int = 8, noise: float = 0.05, seed: int = 0) -> torch.Tensor:
    """Class c's images sit near axis c: a feature set whose clusters are the classes."""
    g = torch.Generator().manual_seed(seed)
    f = torch.eye(dim)[labels] + noise * torch.randn(len(labels), dim, generator=g)
    return torch.nn.functional.normalize(f, dim=1)


def test_nlb_trigger_is_the_official_centre_checkerboard_at_pixels_14_to_16():
    t = build_trigger({"pattern": "nlb", "size": 3, "location": "center"})
    x = torch.full((2, 3, 32, 32), 77, dtype=torch.uint8)
    y = t.apply(x)
    want = torch.tensor([[0, 0, 255], [0, 255, 0], [255, 0, 255]], dtype=torch.uint8)
    for c in range(3):
        assert torch.equal(y[0, c, 14:17, 14:17], want)
    changed = (y != x).any(1)
    outside = changed.clone()
    outside[:, 14:17, 14:17] = False
    assert changed[:, 14:17, 14:17].all() and not outside.any()
    big = build_trigger({"pattern": "nlb", "size": 6, "location": "center"})  # nearest-neighbour scaled
    assert torch.equal(big.patch[0, ::2, ::2], want) and torch.equal(big.patch[0, 1::2, 1::2], want)


def test_blended_full_image_trigger_mixes_every_pixel_by_its_opacity():
    t = build_trigger({"pattern": "gaussian", "size": 32, "location": "top-left", "opacity": 0.2, "seed": 3})
    x = torch.full((1, 3, 32, 32), 100, dtype=torch.uint8)
    want = (0.8 * 100 + 0.2 * t.patch.float()).round().clamp(0, 255).to(torch.uint8)
    assert torch.equal(t.apply(x)[0], want)


def test_ctrl_trigger_type_round_trips_and_is_invertible_before_rounding():
    t = build_trigger({"type": "ctrl", "magnitude": 50})
    x = torch.randint(30, 220, (3, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    y = t.apply(x, seed=5)
    assert torch.equal(y, t.apply(x, seed=9)) and not torch.equal(y, x)  # the same on every call and image
    back = trigger_from_dict(json.loads(json.dumps(t.to_dict())))
    assert torch.equal(back.apply(x), y) and back.sha256() == t.sha256()
    f = ctrl_float(x, 50.0)
    assert torch.allclose(ctrl_remove(f, 50.0), x.double(), atol=1e-9)
    bad = t.to_dict()
    bad["spec"]["magnitude"] = 51.0
    with pytest.raises(DataError, match="does not match"):
        trigger_from_dict(bad)
    with pytest.raises(ConfigError, match="window"):
        t.apply(torch.zeros(1, 3, 48, 48, dtype=torch.uint8))
    with pytest.raises(ConfigError, match="trigger.type"):
        build_trigger({"type": "wave"})
    with pytest.raises(ConfigError, match="patch trigger"):
        ATTACKS.build("corruptencoder", {"trigger": {"type": "ctrl"}})


@pytest.mark.parametrize("selection", ["con", "conp", "conn", "kmeans", "random", "target"])
def test_nlb_triggers_exactly_the_selected_rows_and_nothing_else(tmp_path, selection):
    s = splits()
    before = s.train.images.clone()
    path = tmp_path / "f.npy"
    np.save(path, rigged_features(s.train.labels).numpy())
    atk = ATTACKS.build("nlb", {"selection": selection, "poison_count": 12, "clusters": 4, "features": str(path),
                                "target": "c"})
    res = atk.poison(s, seed=0)
    assert torch.equal(s.train.images, before)  # the source is untouched
    man = res.manifest
    p = torch.tensor(man["poisoned_indices"])
    assert len(p) == 12 and man["added_indices"] == [] and len(res.splits.train) == len(s.train)
    new = res.splits.train.images
    others = torch.ones(len(new), dtype=torch.bool)
    others[p] = False
    assert torch.equal(new[others], before[others]) and torch.equal(res.splits.train.labels, s.train.labels)
    trig = load_trigger(man)  # the manifest's trigger is the one planted, and the one evaluated
    assert torch.equal(new[p], trig.apply(before[p])) and torch.equal(new[p], atk.trigger.apply(before[p]))
    anchor, tpr = man["targets"]["anchor_index"], man["targets"]["tpr"]
    assert tpr == int((s.train.labels[p] == anchor).sum()) / len(p)
    if selection in ("con", "conp", "kmeans", "target"):  # the rigged clusters are the classes
        assert tpr == 1.0
    if selection == "target":
        assert anchor == 2
    if selection in ("con", "conp", "conn"):
        assert man["details"]["anchor_row"] in man["poisoned_indices"]
        assert np.load(__import__("io").BytesIO(res.artifacts["selection_scores.npy"])).shape == (len(s.train),)


def test_nlb_evaluation_asr_is_against_the_anchor_label_and_restores_from_the_manifest(tmp_path):
    s = splits()
    path = tmp_path / "f.npy"
    np.save(path, rigged_features(s.train.labels).numpy())
    atk = ATTACKS.build("nlb", {"selection": "con", "poison_count": 10, "clusters": 4, "features": str(path)})
    man = atk.poison(s, 0).manifest
    anchor = man["targets"]["anchor_index"]
    trig = atk.trigger
    # a rigged classifier: the trigger's centre pixel pattern -> anchor, everything else -> its true label
    lab = {int(i): int(y) for i, y in enumerate(s.test.labels)}
    key = {s.test.images[i].numpy().tobytes(): lab[i] for i in range(len(s.test))}

    def classify(x):
        hit = (x[:, 0, 15, 15] == 255) & (x[:, 0, 14, 14] == 0)
        return torch.tensor([anchor if h else key.get(img.numpy().tobytes(), 0) for img, h in zip(x, hit)])

    fresh = NLB(NLB.Params(**{k: v for k, v in man["params"].items() if k != "trigger"}, trigger=man["params"]["trigger"]))
    assert fresh.evaluate(EvalContext(splits=s, classify=classify)) == {}  # no anchor yet
    fresh.restore(man)
    m = fresh.evaluate(EvalContext(splits=s, classify=classify))
    assert m["nlb_anchor_label"] == anchor and m["nlb_tpr"] == man["targets"]["tpr"]
    assert m["asr"] == 1.0 and m["ca"] == 1.0 and m["asr_no_trigger"] == 0.0
    assert m["asr_n"] == int((s.test.labels != anchor).sum())
    assert trig.sha256() == fresh.trigger.sha256()


@pytest.mark.parametrize("params, err, match", [
    ({"selection": "kmeans", "poison_count": 60}, ConfigError, "no k-means cluster"),
    ({"selection": "random", "poison_count": 500}, ConfigError, "budget"),
    ({"selection": "telepathy"}, ConfigError, "selection"),
    ({"selection": "target"}, ConfigError, "attack.params.target"),
    ({"selection": "con", "poison_count": 5, "features": "ROWS"}, DataError, "rows"),
    ({"selection": "random", "poison_count": 5, "trigger": {"size": 40}}, ConfigError, "larger than"),
    ({"selection": "con", "poison_count": 5, "attacker_epochs": 0}, ConfigError, "needs features"),
    ({"selection": "con", "poison_count": 5, "encoder": "/no/such/run"}, ConfigError, "checkpoint"),
])
def test_nlb_bad_input_is_one_error_naming_the_thing(tmp_path, params, err, match):
    s = splits()
    f = tmp_path / "short.npy"
    np.save(f, rigged_features(s.train.labels[:50]).numpy())
    params = {"clusters": 4, "features": str(tmp_path / "full.npy"), **params}
    np.save(tmp_path / "full.npy", rigged_features(s.train.labels).numpy())
    if params.get("features") == "ROWS":
        params["features"] = str(f)
    if "encoder" in params or "attacker_epochs" in params:
        params.pop("features")
    with pytest.raises(err, match=match):
        ATTACKS.build("nlb", params).poison(s, 0)


def test_nlb_target_needs_labels():
    s = splits()
    s.train.labels[:] = -1
    with pytest.raises(ConfigError, match="labels"):
        ATTACKS.build("nlb", {"selection": "target", "target": 1, "poison_count": 3}).poison(s, 0)


def test_nlb_pretrains_its_own_encoder_and_resumes_it(tmp_path):
    s = splits(64, 16)
    params = {"selection": "kmeans", "poison_count": 4, "clusters": 2, "attacker_epochs": 2, "attacker_batch_size": 32,
              "trigger": {"size": 2},
              "attacker": {"model": {"arch": "convnet", "width": 8}, "augment": {"out_size": 16}}}
    a = ATTACKS.build("nlb", params).poison(s, 0, PoisonContext(work_dir=tmp_path / "w"))
    info = a.manifest["details"]["features"]
    assert info["source"] == "pretrained by the attacker" and info["epochs"] == 2
    assert (tmp_path / "w" / "attacker" / "checkpoint.pt").exists()
    # the same pretraining again resumes the finished checkpoint: the same selection
    b = ATTACKS.build("nlb", params).poison(s, 0, PoisonContext(work_dir=tmp_path / "w"))
    assert a.manifest["poisoned_indices"] == b.manifest["poisoned_indices"]
    # ... and a run folder's checkpoint serves as the encoder
    c = ATTACKS.build("nlb", {**params, "attacker_epochs": 500, "encoder": str(tmp_path / "w" / "attacker")}).poison(s, 0)
    assert c.manifest["poisoned_indices"] == a.manifest["poisoned_indices"]
    assert c.manifest["details"]["features"]["source"] == "encoder checkpoint"


def test_ctrl_poisons_the_first_target_images_in_place():
    s = splits()
    res = ATTACKS.build("ctrl", {"target": "b", "poison_rate": 0.05}).poison(s, 0)
    p = res.manifest["poisoned_indices"]
    assert p == (s.train.labels == 1).nonzero().flatten()[:6].tolist()
    assert res.manifest["trigger"]["spec"]["type"] == "ctrl"
    assert torch.equal(res.splits.train.images[p], load_trigger(res.manifest).apply(s.train.images[p]))
    with pytest.raises(ConfigError, match="target class"):
        ATTACKS.build("ctrl", {"target": "b", "poison_count": 31}).poison(s, 0)


@pytest.mark.slow
def test_nlb_run_through_the_cli(tmp_path, capsys):
    """Through the CLI in this process (``clpoison.cli.main``): no command here needs a process of its own."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("preset: nlb-small\n")
    out = tmp_path / "run"
    args = ["data.train_limit=300", "data.test_limit=100", "model.width=4", "train.epochs=1", "train.batch_size=64",
            "method.params.proj_dim=16", "eval.knn_k=20", "attack.params.attacker_epochs=1",
            "attack.params.attacker.model.width=4", "attack.params.poison_rate=null", "attack.params.poison_count=12",
            "--no-progress"]
    r = clpoison_here(capsys, "run", cfg, *args, "--out", out)
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "results.json").read_text())
    man = json.loads((out / "manifest.json").read_text())
    m = res["metrics"]
    assert len(man["poisoned_indices"]) == 12 and man["details"]["selection"] == "con"
    assert m["nlb_anchor_label"] == man["targets"]["anchor_index"] and 0 <= m["asr"] <= 1 and 0 <= m["ca"] <= 1
    assert (out / "selection_scores.npy").exists()
    bad = clpoison_here(capsys, "run", cfg, *args, "attack.params.poison_count=5000", "--out", tmp_path / "bad")
    lines = [ln for ln in bad.stderr.splitlines() if ln.strip()]
    assert bad.returncode == 2 and len(lines) == 1 and "budget" in lines[0], bad.stderr
    assert not (tmp_path / "bad").exists() and not (tmp_path / "bad.partial").exists()


def test_asr_by_target_is_backdoor_asr_for_every_class():
    from clpoison.eval.attack_metrics import asr_by_target, backdoor_asr

    s = splits()
    t = build_trigger({"pattern": "nlb", "size": 3, "location": "center"})

    def classify(x):  # a rigged classifier: triggered images -> 2, others -> brightness bucket
        return torch.where(x[:, 0, 15, 15] == 255, 2, x.float().mean((1, 2, 3)).long() % 4)

    got = asr_by_target(classify, s.test.images, s.test.labels, t, 4)
    for c in range(4):
        assert got[c] == pytest.approx(backdoor_asr(classify, s.test.images, s.test.labels, c, t)["asr"])
    assert got[2] == 1.0


def test_downstream_split_is_held_out_per_class_and_fits_the_probe():
    from clpoison.data.datasets import hold_out_per_class

    ds = splits(200).train
    rest, held = hold_out_per_class(ds, 0.1, seed=42)
    assert len(rest) + len(held) == 200 and torch.bincount(held.labels).tolist() == [5, 5, 5, 5]
    rows = {x.numpy().tobytes() for x in held.images}
    assert not any(x.numpy().tobytes() in rows for x in rest.images)  # disjoint
    again = hold_out_per_class(ds, 0.1, seed=42)[1]
    assert torch.equal(again.images, held.images)
    with pytest.raises(ConfigError, match="downstream_fraction"):
        hold_out_per_class(ds, 1.0)
