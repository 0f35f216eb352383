"""CorruptEncoder's experimental setting (issue 25): the target class kept out of pretraining
(``data.exclude_classes``), poisons larger than the clean images, object-free backgrounds, and the one-line errors
of an inconsistent setting."""

import json

import pytest
import torch

from clpoison.attacks.base import ATTACKS
from clpoison.cli import main
from clpoison.data.augment import AugmentConfig, TwoViewAugment
from clpoison.data.datasets import ImageDataset, ImageSplits, exclude_classes
from clpoison.data.loader import ResidentBatches
from clpoison.errors import ConfigError

TRIG = {"pattern": "uniform", "size": 6, "location": "center-range", "center_range": [0.25, 0.75], "seed": 0}
RED = torch.tensor([255, 0, 0], dtype=torch.uint8)


def dataset(n_per_class: int = 12, classes=("plane", "dog", "cat")) -> ImageDataset:
    """Class 0 images are pure red with a dark object-like square; the other classes never hold red (R < 100)."""
    g = torch.Generator().manual_seed(0)
    n = n_per_class * len(classes)
    labels = torch.arange(n) % len(classes)
    x = torch.randint(0, 100, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    x[labels == 0] = RED.view(3, 1, 1)
    return ImageDataset(x, labels, list(classes), "toy")


def splits(excluded=("plane",)) -> ImageSplits:
    ds = dataset()
    return exclude_classes(ImageSplits(ds, ds.subset(range(9))), list(excluded))


def test_excluded_class_never_reaches_the_training_batches_and_the_probe_keeps_it():
    s = splits()
    assert s.source["excluded_classes"] == ["plane"]
    assert len(s.withheld) == 12 and bool((s.withheld.labels == 0).all())
    assert int((s.labelled.labels == 0).sum()) == 12  # the probe's labelled split keeps every class
    assert len(s.test) == 9 and int((s.test.labels == 0).sum()) == 3
    seen = torch.zeros(3, dtype=torch.int64)
    batches = ResidentBatches(s.train, 8, torch.device("cpu"), seed=0)
    for e in range(2):
        for idx, _, _ in batches.epoch(e):
            seen += torch.bincount(s.train.labels[idx.cpu()], minlength=3)
    assert seen[0] == 0 and seen[1] > 0 and seen[2] > 0


def test_excluding_unknown_or_every_class_is_one_line():
    ds = dataset()
    with pytest.raises(ConfigError, match="data.exclude_classes: class 'truck'"):
        exclude_classes(ImageSplits(ds, ds), ["truck"])
    with pytest.raises(ConfigError, match="excludes every class"):
        exclude_classes(ImageSplits(ds, ds), ["plane", "dog", "cat"])


CE_REFS = {"num_references": 2, "num_support": 2}


@pytest.mark.parametrize("name,extra", [("corruptencoder", {**CE_REFS, "object_width": 64, "background": "crops",
                                                            "background_crop": 4}),
                                        ("corruptencoder-plus", {**CE_REFS, "object_width": 64, "background": "crops"}),
                                        ("ssl-backdoor", {"mode": "add", "poison_scale": 2.0})])
def test_poisons_out_of_pretraining_come_from_the_withheld_class(name, extra):
    s = splits()
    atk = ATTACKS.build(name, {"target": "plane", "target_in_pretraining": False, "poison_count": 6, "trigger": TRIG,
                               **extra})
    res = atk.poison(s, 0)
    tr, det = res.splits.train, res.manifest["details"]
    assert det["target_in_pretraining"] is False and det["excluded_classes"] == ["plane"]
    assert len(tr) == len(s.train) + 6 and len(s.train) == 24  # the input split is untouched
    added = torch.tensor(res.manifest["added_indices"])
    assert int((tr.labels == 0).sum()) == 6 and bool((tr.labels[added] == 0).all())  # only the poisons
    assert tr.sizes is not None and bool((tr.sizes[added] > 32).any())  # larger than the 32-px clean images
    refs = det.get("reference_images") or det.get("source_images")
    assert refs and all(r.startswith("withheld[") for r in refs)


def test_composite_backgrounds_hold_no_target_class_pixels():
    s = splits()
    atk = ATTACKS.build("corruptencoder", {"target": "plane", "target_in_pretraining": False, "poison_count": 8,
                                           "trigger": TRIG, "object_width": 48, "background": "crops",
                                           "reference_mask": "center"})
    res = atk.poison(s, 1)
    det = res.manifest["details"]
    assert det["background"] == "crops" and det["background_crop"] == 8
    assert all(s.train.labels[i] != 0 for i in det["background_indices"])
    tr = res.splits.train
    for k, geo in zip(res.manifest["added_indices"], det["layout"]):
        h, w = tr.sizes[k].tolist()
        img = tr.images[k, :, :h, :w].clone().int()
        keep = torch.ones(h, w, dtype=torch.bool)
        keep[geo["o_y"] : geo["o_y"] + geo["o_h"], geo["o_x"] : geo["o_x"] + geo["o_w"]] = False
        keep[geo["t_y"] : geo["t_y"] + geo["t"], geo["t_x"] : geo["t_x"] + geo["t"]] = False
        red = (img[0] > 150) & (img[1] < 60) & (img[2] < 60)
        assert keep.sum() > 0 and not bool((red & keep).any())
        assert bool(red[~keep].any())  # the object itself is there


def test_larger_poisons_go_through_the_same_augmentation_to_the_training_size():
    s = splits()
    atk = ATTACKS.build("corruptencoder", {"target": "plane", "poison_count": 4, "trigger": TRIG, "object_width": 64})
    tr = atk.poison(s, 0).splits.train
    aug = TwoViewAugment(AugmentConfig(out_size=32))
    idx = torch.tensor([0, 1, len(tr) - 2, len(tr) - 1])
    v1, v2 = aug(tr.images[idx], tr.sizes[idx])
    assert v1.shape == v2.shape == (4, 3, 32, 32)
    assert tuple(tr.images.shape[2:]) != (32, 32)


def test_target_in_pretraining_checked_against_the_data():
    ds = dataset()
    params = {"target": "plane", "target_in_pretraining": False, "poison_count": 2, "trigger": TRIG}
    with pytest.raises(ConfigError, match="add it to data.exclude_classes"):
        ATTACKS.build("corruptencoder", params).poison(ImageSplits(ds, ds), 0)
    with pytest.raises(ConfigError, match="has no pretraining images"):
        ATTACKS.build("corruptencoder", {**params, "target_in_pretraining": True}).poison(splits(), 0)
    with pytest.raises(ConfigError, match="use mode: add"):
        ATTACKS.build("ssl-backdoor", params)
    res = ATTACKS.build("corruptencoder", {**params, "target_in_pretraining": None}).poison(ImageSplits(ds, ds), 0)
    assert res.manifest["details"]["target_in_pretraining"] is True  # recorded: a deviation from the paper


TINY = ["data.train_limit=300", "data.test_limit=40", "model.width=4", "train.epochs=1", "train.batch_size=32",
        "method.params.proj_dim=16", "eval.knn_k=5", "eval.every_epochs=0", "eval.random_init_control=false",
        "--no-progress"]


@pytest.mark.parametrize("case,args,needle", [
    ("unknown-class", ["data.exclude_classes=[zebra]"], "data.exclude_classes: class 'zebra'"),
    ("every-class", ["data.exclude_classes=[0,1,2,3,4,5,6,7,8,9]"], "excludes every class"),
    ("not-a-list", ["data.exclude_classes=airplane"], "data.exclude_classes"),
    ("target-not-excluded", ["data.exclude_classes=[]"], "target_in_pretraining=false"),
])
def test_bad_setting_is_one_line_exit_2_nothing_written(tmp_path, capsys, monkeypatch, case, args, needle):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text("preset: corruptencoder-small\n")
    assert main(["run", "c.yaml", *TINY, *args, "--out", "o"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and needle in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]


def test_run_records_the_setting(tmp_path):
    """A tiny end-to-end run of the preset: the airplanes stay out of pretraining, the manifest and results say so."""
    out = tmp_path / "run"
    (tmp_path / "c.yaml").write_text("preset: corruptencoder-small\n")
    assert main(["run", str(tmp_path / "c.yaml"), *TINY, "data.train_limit=600", "attack.params.poison_rate=null", "attack.params.poison_count=8",
                 "--out", str(out)]) == 0
    man = json.loads((out / "manifest.json").read_text())
    res = json.loads((out / "results.json").read_text())
    assert man["details"]["target_in_pretraining"] is False and man["details"]["excluded_classes"] == ["airplane"]
    assert res["data"]["excluded_classes"] == ["airplane"] and "asr" in res["metrics"]
    assert "kept out of pretraining (`data.exclude_classes`): airplane" in (out / "report.md").read_text()


def test_a_trigger_larger_than_the_test_images_is_refused_before_training(tmp_path, capsys, monkeypatch):
    """CorruptEncoder's composites make room for any trigger, but the evaluation pastes it into the 32-px test
    images: the 40-px default must fail at poisoning time, not after training (issue 29)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text("preset: corruptencoder-small\n")
    assert main(["run", "c.yaml", *TINY, "attack.params.trigger.size=40", "--out", "o"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "attack.params.trigger does not fit the 32x32 test images" in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]
