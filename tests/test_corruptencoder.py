"""CorruptEncoder / CorruptEncoder+ / SSL-Backdoor / PoisonedEncoder: layout geometry, budget, support images,
variable-size poisons through augmentation, ASR evaluation, and an end-to-end poisoned SimCLR run via the CLI."""

import json

import numpy as np
import pytest
import torch

from clpoison.contexts import EvalContext
from clpoison.attacks import ATTACKS
from clpoison.attacks.corruptencoder.corruptencoder import CorruptEncoder, CorruptEncoderPlus
from clpoison.attacks.corruptencoder.corruptencoder_layout import corrupt_layout, min_object_size
from clpoison.poisoned.manifest import load_trigger
from clpoison.attacks.corruptencoder.poisoned_encoder import PoisonedEncoder
from clpoison.attacks.corruptencoder.reference_objects import color_distance_mask, cut_object
from clpoison.attacks.corruptencoder.ssl_backdoor import SSLBackdoor
from clpoison.data.augment import AugmentConfig, TwoViewAugment, crop_resize_flip
from clpoison.data.datasets import ImageDataset, ImageSplits, concat_datasets, stack_on_canvas
from clpoison.data.views import sample_rrc_boxes
from clpoison.errors import ConfigError, DataError
from clpoison.experiments.config import build_config

from cli_inprocess import clpoison_here


def toy_splits(n=60, size=32, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    x[:, :, size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 255  # a bright "object" for the saliency mask
    y = torch.arange(n) % classes
    names = [f"c{i}" for i in range(classes)]
    tr = ImageDataset(x, y, names, "toy/train")
    return ImageSplits(tr, tr.subset(range(min(n, 30)), "toy/test"))


# ---------------------------------------------------------------------------------------------------------------
# layout geometry


@pytest.mark.parametrize("t", [1, 4, 8, 12, 40])
@pytest.mark.parametrize("side", ["left", "right", "top", "bottom"])
def test_layout_object_at_edge_trigger_in_other_half(t, side):
    rng = np.random.default_rng(0)
    need_l, need_c = min_object_size(t)
    for L in list(range(need_l, need_l + 12)) + [100, 400]:
        for C in sorted({need_c, need_c + 3, max(need_c, 32), 224}):
            o_w, o_h = (L, C) if side in ("left", "right") else (C, L)
            for _ in range(20):
                geo = corrupt_layout(o_h, o_w, t, side, rng.random(3).tolist())
                ph, pw, ox, oy, tx, ty = (geo[k] for k in ("p_h", "p_w", "o_x", "o_y", "t_x", "t_y"))
                horiz = side in ("left", "right")
                assert (ph, pw) == ((o_h, 2 * o_w) if horiz else (2 * o_h, o_w))
                # both inside the canvas
                assert 0 <= ox and ox + o_w <= pw and 0 <= oy and oy + o_h <= ph
                assert 0 <= tx and tx + t <= pw and 0 <= ty and ty + t <= ph
                # object at its edge with <= 5% (+ rounding) jitter; trigger entirely in the other half
                P = pw if horiz else ph
                o = ox if horiz else oy
                ta = tx if horiz else ty
                if side in ("left", "top"):
                    assert o <= 0.05 * P + 0.5
                    assert ta >= o + L  # beyond the object
                else:
                    assert o >= P - L - 0.05 * P - 0.5
                    assert ta + t <= o
                # the trigger never overlaps the object box
                assert tx + t <= ox or tx >= ox + o_w or ty + t <= oy or ty >= oy + o_h


def test_layout_follows_the_official_intervals_for_large_objects():
    # 200x400 object, 40-px trigger: right-half interval [o_x + o_w + 0.125·p_w, p_w − 0.125·p_w − 40]
    for u in ([0.0, 0.0, 0.0], [0.99, 0.99, 0.99]):
        g = corrupt_layout(200, 400, 40, "left", u)
        assert g["p_w"] == 800 and g["p_h"] == 200 and 0 <= g["o_x"] <= 40
        assert g["o_x"] + 400 + 100 - 1 <= g["t_x"] <= 800 - 100 - 40 + 1
        assert 50 - 1 <= g["t_y"] <= 200 - 50 - 40 + 1


def test_layout_rejects_objects_too_small_for_the_trigger():
    with pytest.raises(DataError, match="too small"):
        corrupt_layout(8, 8, 8, "left", [0.5, 0.5, 0.5])


@pytest.mark.parametrize("layout", ["left-right", "top-bottom", "both"])
def test_tiny_objects_are_upscaled_and_composites_keep_the_trigger_in_the_other_half(layout):
    sp = toy_splits(size=8)  # 8x8 images: objects smaller than the 6-px trigger needs
    sp.test = toy_splits(size=32).test  # the evaluation's test images must hold the trigger (checked at poisoning)
    atk = CorruptEncoder(CorruptEncoder.Params(target="c0", poison_count=12, trigger={"size": 6}, layout=layout,
                                               reference_mask="center", center_fraction=0.5))
    res = atk.poison(sp, seed=3)
    tr = res.splits.train
    for i, geo in zip(res.manifest["added_indices"], res.manifest["details"]["layout"]):
        h, w = tr.valid_sizes()[i].tolist()
        assert (h, w) == (geo["p_h"], geo["p_w"])
        ty, tx = geo["t_y"], geo["t_x"]
        assert torch.equal(tr.images[i, :, ty : ty + 6, tx : tx + 6], atk.trigger.patch)
        horiz = geo["side"] in ("left", "right")
        if geo["side"] in ("left", "top"):
            assert (tx if horiz else ty) >= (geo["o_x"] + geo["o_w"] if horiz else geo["o_y"] + geo["o_h"])
        else:
            assert (tx if horiz else ty) + 6 <= (geo["o_x"] if horiz else geo["o_y"])
        assert bool((tr.images[i, :, h:, :] == 0).all()) and bool((tr.images[i, :, :, w:] == 0).all())


# ---------------------------------------------------------------------------------------------------------------
# objects, budget, support images, manifest


def test_object_is_the_bounding_box_of_the_largest_region():
    img = torch.zeros(3, 20, 30, dtype=torch.uint8)
    m = np.zeros((20, 30), dtype=bool)
    m[2:4, 2:4] = True  # small region
    m[5:15, 10:25] = True  # largest region
    obj = cut_object(img, m, "x", "label.png")
    assert tuple(obj.image.shape) == (3, 10, 15)
    with pytest.raises(DataError, match="no object pixels"):
        cut_object(img, np.zeros((20, 30), dtype=bool), "x", "label.png")


def test_color_distance_mask_finds_a_centred_object_and_falls_back_to_the_centre():
    img = torch.full((3, 32, 32), 40, dtype=torch.uint8)
    img[:, 10:22, 8:26] = 220
    m, how = color_distance_mask(img)
    assert how == "color-distance" and m[12, 12] and not m[0, 0]
    _, how = color_distance_mask(torch.full((3, 32, 32), 40, dtype=torch.uint8))
    assert how == "center"


@pytest.mark.parametrize("cls", [CorruptEncoder, CorruptEncoderPlus, PoisonedEncoder])
def test_budget_respected_and_poisons_added(cls):
    sp = toy_splits()
    res = cls(cls.Params(target="c1", poison_rate=0.1, trigger={"size": 4})).poison(sp, seed=0)
    m = res.manifest
    assert len(m["added_indices"]) == 6 == m["details"]["poison_count"]
    assert len(res.splits.train) == 66 and m["poisoned_indices"] == []
    assert torch.equal(res.splits.train.images[:60, :, :32, :32], sp.train.images)  # clean rows untouched
    assert res.splits.test is sp.test
    assert load_trigger(m).sha256() == res_trigger_sha(cls)


def res_trigger_sha(cls):
    return cls(cls.Params(target="c1", trigger={"size": 4})).trigger.sha256()


def test_corruptencoder_plus_support_images_carry_no_trigger():
    sp = toy_splits(n=90)
    atk = CorruptEncoderPlus(CorruptEncoderPlus.Params(target="c0", poison_count=10, trigger={"size": 5}))
    res = atk.poison(sp, seed=1)
    lay = res.manifest["details"]["layout"]
    kinds = [g["kind"] for g in lay]
    assert kinds.count("support") == int(10 * 0.2) == res.manifest["details"]["support_images"]
    assert kinds.count("composite") == 8
    patch = atk.trigger.patch.unsqueeze(0)
    tr = res.splits.train
    for i, g in zip(res.manifest["added_indices"], lay):
        h, w = tr.valid_sizes()[i].tolist()
        win = tr.images[i, :, :h, :w].unfold(1, 5, 1).unfold(2, 5, 1)  # (3, h-4, w-4, 5, 5)
        found = bool((win.permute(1, 2, 0, 3, 4) == patch).flatten(2).all(2).any())
        assert found == (g["kind"] == "composite")
        if g["kind"] == "support":  # two target-class images side by side
            assert w == 2 * h


def test_ssl_backdoor_patches_target_images_in_place_at_the_budget():
    sp = toy_splits()
    atk = SSLBackdoor(SSLBackdoor.Params(target="c2", poison_count=5, trigger={"size": 4}))
    res = atk.poison(sp, seed=0)
    idx = res.manifest["poisoned_indices"]
    assert len(idx) == 5 and all(int(sp.train.labels[i]) == 2 for i in idx) and len(res.splits.train) == 60
    mask = atk.trigger.mask(sp.train.images[idx], torch.Generator().manual_seed(0))
    for k, i in enumerate(idx):
        ys, xs = mask[k].nonzero(as_tuple=True)
        assert 8 <= int(ys.min()) and int(ys.max()) + 1 <= 24 and 8 <= int(xs.min()) and int(xs.max()) + 1 <= 24
    changed = (res.splits.train.images != sp.train.images).flatten(1).any(1).nonzero().view(-1).tolist()
    assert set(changed) <= set(idx)
    with pytest.raises(ConfigError, match="target class"):
        SSLBackdoor(SSLBackdoor.Params(target="c2", poison_count=21, trigger={"size": 4})).poison(sp, 0)


def test_manifest_is_deterministic_and_params_are_validated():
    sp = toy_splits()
    a = CorruptEncoder(CorruptEncoder.Params(target="c0", poison_count=4, trigger={"size": 4})).poison(sp, 7)
    b = CorruptEncoder(CorruptEncoder.Params(target="c0", poison_count=4, trigger={"size": 4})).poison(sp, 7)
    a["details"] if False else None
    da, db = dict(a.manifest["details"]), dict(b.manifest["details"])
    for d in (da, db):
        d.pop("craft_seconds"), d.pop("craft_images_per_s")
    assert da == db and torch.equal(a.splits.train.images, b.splits.train.images)
    for bad, msg in [({"layout": "diag"}, "layout"), ({"support_ratio": 1.5}, "support_ratio"),
                     ({"reference_mask": "x"}, "reference_mask"), ({"nope": 1}, "unknown key")]:
        with pytest.raises(ConfigError, match=msg):
            CorruptEncoder.Params.from_dict({"target": "c0", **bad})
    with pytest.raises(ConfigError, match="target"):
        CorruptEncoder(CorruptEncoder.Params(target="zebra", trigger={"size": 4})).poison(sp, 0)


def test_reference_dir_with_masks(tmp_path):
    from PIL import Image

    for k in range(3):
        d = tmp_path / "refs" / str(k)
        d.mkdir(parents=True)
        img = np.full((20, 24, 3), 30 * k, np.uint8)
        Image.fromarray(img).save(d / "img.png")
        m = np.zeros((20, 24, 3), np.uint8)
        m[4:16, 3:21, 0] = 128
        Image.fromarray(m).save(d / "label.png")
    sp = toy_splits()
    res = CorruptEncoder(CorruptEncoder.Params(target="c0", poison_count=3, trigger={"size": 4},
                                               reference_dir=str(tmp_path / "refs"))).poison(sp, 0)
    objs = res.manifest["details"]["objects"]
    assert all(o["mask"] == "label.png" and o["size"] == [12, 18] for o in objs)
    assert {g["p_h"] for g in res.manifest["details"]["layout"]} == {12}


# ---------------------------------------------------------------------------------------------------------------
# variable-size poisons through the data layer and augmentation


def test_concat_keeps_the_clean_path_and_pads_mixed_sizes():
    sp = toy_splits()
    same = concat_datasets([sp.train, sp.train.subset(range(3))])
    assert same.sizes is None and same.images.shape[1:] == (3, 32, 32)
    imgs, sizes = stack_on_canvas([torch.ones(3, 32, 64, dtype=torch.uint8), torch.ones(3, 20, 40, dtype=torch.uint8)])
    extra = ImageDataset(imgs, torch.tensor([0, 1]), sp.train.class_names, "p", sizes)
    mixed = concat_datasets([sp.train, extra])
    assert mixed.images.shape[1:] == (3, 32, 64)
    assert mixed.valid_sizes()[:60].tolist() == [[32, 32]] * 60 and mixed.valid_sizes()[60:].tolist() == [[32, 64], [20, 40]]
    assert bool((mixed.images[:60, :, :, 32:] == 0).all()) and bool((mixed.images[61, :, 20:] == 0).all())
    with pytest.raises(DataError, match="class names"):
        concat_datasets([sp.train, ImageDataset(imgs, torch.tensor([0, 0]), ["x"], "q", sizes)])


def test_variable_size_poisons_flow_through_augmentation_and_crops_never_read_padding():
    torch.manual_seed(0)
    sizes = torch.tensor([[32, 32], [32, 64], [18, 64], [7, 13], [32, 45]] * 8)
    canvas = torch.zeros(len(sizes), 3, 32, 64, dtype=torch.uint8)
    for i, (h, w) in enumerate(sizes.tolist()):
        canvas[i, :, :h, :w] = 255  # valid area white, padding black
    for _ in range(5):
        boxes = sample_rrc_boxes(sizes, (0.08, 1.0))
        assert bool((boxes[:, 2] <= sizes[:, 1] + 1e-4).all() and (boxes[:, 3] <= sizes[:, 0] + 1e-4).all())
        out = crop_resize_flip(canvas.float() / 255, boxes, (32, 32), torch.rand(len(sizes)) < 0.5, sizes)
        assert out.min() > 1 - 1e-5  # no tap reads the black padding
    cfg = AugmentConfig(out_size=24, jitter_p=0.0, gray_p=0.0, mean=(0, 0, 0), std=(1, 1, 1))
    v1, v2 = TwoViewAugment(cfg)(canvas, sizes)
    assert v1.shape == v2.shape == (len(sizes), 3, 24, 24)
    assert v1.min() > 1 - 1e-5 and v2.min() > 1 - 1e-5


def test_poisoned_training_split_feeds_the_loader():
    from clpoison.data.loader import ResidentBatches, TwoViewBatches

    sp = toy_splits()
    res = CorruptEncoder(CorruptEncoder.Params(target="c0", poison_count=6, trigger={"size": 4})).poison(sp, 0)
    tb = TwoViewBatches(ResidentBatches(res.splits.train, 16, torch.device("cpu")), TwoViewAugment(AugmentConfig(out_size=32)))
    batch = next(iter(tb.epoch(0)))
    assert batch["views"][0].shape == (16, 3, 32, 32)


# ---------------------------------------------------------------------------------------------------------------
# evaluation: CA and ASR through the shared metric


def test_evaluate_uses_the_shared_asr_with_the_same_trigger_in_the_centre_range():
    sp = toy_splits()
    atk = CorruptEncoder(CorruptEncoder.Params(target="c1", trigger={"size": 4, "pattern": "solid", "color": [1, 2, 3]}))
    seen = []

    def classify(x):  # a rigged probe: class 1 iff the (1,2,3) patch is present, else the true class of the toy
        seen.append(x)
        hit = ((x[:, 0] == 1) & (x[:, 1] == 2) & (x[:, 2] == 3)).flatten(1).any(1)
        return torch.where(hit, torch.ones_like(hit, dtype=torch.long), torch.zeros_like(hit, dtype=torch.long))

    m = atk.evaluate(EvalContext(splits=sp, classify=classify))
    nt = int((sp.test.labels != 1).sum())
    assert m["asr"] == 1.0 and m["asr_n"] == nt and m["ca"] == m["asr_clean_accuracy"]
    assert m["asr_mismatched"] == 0.0  # the control patch (same energy, other pixels) does not fool the rigged probe
    patched = [x for x in seen if bool(((x[:, 0] == 1) & (x[:, 1] == 2) & (x[:, 2] == 3)).any())]
    trig = patched[-1]  # the last call is the mismatched control's; the last with the patch is the ASR's
    hit = ((trig[:, 0] == 1) & (trig[:, 1] == 2) & (trig[:, 2] == 3))
    ys, xs = hit.any(2).nonzero()[:, 1], hit.any(1).nonzero()[:, 1]
    assert int(ys.min()) >= 8 and int(ys.max()) < 24 and int(xs.min()) >= 8 and int(xs.max()) < 24


def test_presets_validate():
    build_config({"preset": "corruptencoder-small"})
    cfg = build_config({"preset": "corruptencoder-paper"}, ["data.path=."])
    assert cfg.method.name == "mocov2" and cfg.attack.params["poison_count"] == 650
    assert cfg.attack.params["trigger"]["size"] == 40 and cfg.train.epochs == 200
    for name in ("ssl-backdoor", "poisoned-encoder", "corruptencoder-plus"):
        assert name in ATTACKS


# ---------------------------------------------------------------------------------------------------------------
# end to end through the CLI


@pytest.mark.slow
def test_poisoned_simclr_run_through_cli(tmp_path, capsys):
    """Through the CLI in this process (``clpoison.cli.main``; tests/test_cli.py keeps the subprocess)."""
    out = tmp_path / "run"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("preset: corruptencoder-small\n")
    p = clpoison_here(capsys, "run", cfg, "train.epochs=1", "data.train_limit=256", "data.test_limit=64",
                      "train.batch_size=64", "model.width=8", "eval.random_init_control=false",
                      "attack.params.poison_rate=0.125", "attack.params.trigger.size=6", "data.exclude_classes=[]",
                      "attack.params.target_in_pretraining=null", "attack.params.object_width=null",
                      "eval.every_epochs=0", "--out", out, "--no-progress")
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads((out / "results.json").read_text())
    m = res["metrics"]
    for k in ("ca", "asr", "asr_no_trigger", "linear_top1", "backdoor_zscore"):
        assert k in m
    assert 0 <= m["asr"] <= 1 and 0 < m["asr_n"] < 64
    man = json.loads((out / "manifest.json").read_text())
    assert len(man["added_indices"]) == 32 and res["data"]["train_images"] == 288
