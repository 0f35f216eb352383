"""open_clip model state dicts in: the image tower is rebuilt with open_clip's names and gives open_clip's features.

The reference features in ``tests/data/openclip_fixture.json`` were computed by open_clip 3.3.0's own
``ModifiedResNet`` / ``VisionTransformer`` on the seeded weights below (``tests/data/make_openclip_fixture.py``);
when open_clip is importable the comparison is also made against a freshly built open_clip model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import clpoison
from clpoison.cli import main
from clpoison.models.openclip_visual import from_openclip

FIXTURE = Path(__file__).with_name("data") / "openclip_fixture.json"
CASES = {
    "rn": {"kind": "rn", "layers": [1, 2, 1, 1], "width": 8, "heads": 4, "output_dim": 16, "image_size": 64,
           "seed": 1},
    "vit": {"kind": "vit", "layers": 2, "width": 32, "heads": 2, "patch": 8, "mlp_ratio": 2.0, "output_dim": 12,
            "image_size": 32, "seed": 2},
    "vit_quickgelu_ls": {"kind": "vit", "layers": 1, "width": 16, "heads": 2, "patch": 16, "mlp_ratio": 4.0,
                         "output_dim": 8, "image_size": 32, "activation": "quick_gelu", "ls_init_value": 0.5,
                         "seed": 3},
}


def seeded_state(shapes: dict, seed: int) -> dict:
    """Weights from one seeded generator, in key order (BN variances positive, counters zero)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.zeros(shape, dtype=torch.long)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5
        else:
            state[key] = torch.randn(shape, generator=g) * 0.2
    return state


def seeded_images(size: int) -> torch.Tensor:
    return torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))


def _case(name: str) -> tuple[dict, dict, torch.Tensor]:
    ref = json.loads(FIXTURE.read_text())[name]
    state = {f"visual.{k}": v for k, v in seeded_state(ref["shapes"], CASES[name]["seed"]).items()}
    state.update({"token_embedding.weight": torch.zeros(5, 4), "logit_scale": torch.tensor(4.6)})  # text tower
    return CASES[name], state, torch.tensor(ref["features"])


@pytest.mark.parametrize("name", sorted(CASES))
def test_adapter_gives_open_clip_features(name):
    case, state, expected = _case(name)
    net, spec = from_openclip(state, {"heads": case["heads"], "activation": case.get("activation", "gelu")})
    with torch.no_grad():
        got = net(seeded_images(case["image_size"]))
    assert spec["image_size"] == case["image_size"] and spec["feature_dim"] == case["output_dim"]
    assert spec["preprocessing"]["size"] == case["image_size"]
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)


def test_wrong_heads_or_activation_change_the_features():
    """The options the state dict cannot record really matter (the test above is not vacuous)."""
    _, state, expected = _case("vit_quickgelu_ls")
    with torch.no_grad():
        gelu = from_openclip(state, {"heads": 2})[0](seeded_images(32))
    assert (gelu - expected).abs().max() > 1e-3
    _, state, expected = _case("vit")
    with torch.no_grad():
        four_heads = from_openclip(state, {"heads": 4})[0](seeded_images(32))
    assert (four_heads - expected).abs().max() > 1e-3


def test_against_installed_open_clip():
    open_clip = pytest.importorskip("open_clip", reason="open_clip not installed (it needs torchvision, which does "
                                    "not load beside the CPU torch here); the stored open_clip features are used")
    model = open_clip.create_model("RN50", pretrained=None).eval()
    net, spec = from_openclip(model.state_dict(), {})
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(net(x), model.encode_image(x), atol=1e-4, rtol=1e-3)


def test_checkpoint_file_through_load_encoder_and_evaluate(tmp_path, capsys):
    """An open_clip training checkpoint ({"state_dict": {"module.visual...": ...}, "optimizer": ...}) is read with
    weights_only=True and scored by `clpoison evaluate` (kNN / linear probe on the bundled CIFAR-10 subset)."""
    case, state, expected = _case("vit")
    ckpt = {"epoch": 3, "name": "x", "state_dict": {f"module.{k}": v for k, v in state.items()}}
    torch.save(ckpt, tmp_path / "epoch_3.pt")
    enc, spec = clpoison.load_encoder(tmp_path / "epoch_3.pt", {"heads": 2})
    with torch.no_grad():
        torch.testing.assert_close(enc(seeded_images(32)), expected, atol=2e-5, rtol=1e-4)
    assert spec["format"] == "open_clip-visual" and spec["arch"] == "openclip-vit"
    assert main(["evaluate", str(tmp_path / "epoch_3.pt"), "model.heads=2", "data.train_limit=200",
                 "data.test_limit=100"]) == 0
    out = capsys.readouterr().out
    assert "knn" in out.lower()


def test_refusals(tmp_path, capsys):
    case, state, _ = _case("rn")
    with pytest.raises(Exception, match="heads=3 does not divide"):
        from_openclip(state, {"heads": 3})
    with pytest.raises(Exception, match="timm image towers"):
        from_openclip({"visual.trunk.conv.weight": torch.zeros(1)}, {})
    bad = dict(state)
    bad.pop("visual.layer1.0.conv2.weight")
    torch.save(bad, tmp_path / "bad.pt")
    assert main(["evaluate", str(tmp_path / "bad.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "open_clip layout" in err[0] and "layer1.0.conv2.weight" in err[0]
    assert main(["evaluate", str(tmp_path / "bad.pt"), "model.heads=x"]) == 2
