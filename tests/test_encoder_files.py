"""Encoders in and out: every run writes ``encoder.safetensors`` + ``encoder.json``; ``clpoison evaluate`` scores
that file and a torchvision-layout ResNet state dict (weights_only) with the same kNN as the run itself;
``clpoison.load_run`` / ``load_encoder`` read them back."""

import json
import re

import pytest
import torch

import clpoison
from clpoison.cli import main
from clpoison.errors import DataError
from clpoison.models.encoder_file import load_foreign
from clpoison.models.foreign import to_clpoison

TINY = ["data.train_limit=64", "data.test_limit=32", "model.width=4", "train.epochs=1", "train.batch_size=32",
        "method.params.proj_dim=16", "eval.knn_k=5", "--no-progress"]


def to_torchvision(state):
    """clpoison ResNet names -> torchvision names (the inverse of the adapter), plus an ``fc`` head."""
    out = {}
    for k, v in state.items():
        k = re.sub(r"^stem\.0\.", "conv1.", k)
        k = re.sub(r"^stem\.1\.", "bn1.", k)
        m = re.match(r"stages\.(\d)\.(\d+)\.(.*)", k)
        if m:
            k = f"layer{int(m[1]) + 1}.{m[2]}.{m[3].replace('shortcut', 'downsample')}"
        out[k] = v.clone()
    out["fc.weight"], out["fc.bias"] = torch.zeros(10, 32), torch.zeros(10)
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("enc")
    (d / "c.yaml").write_text("preset: simclr-small\n")
    assert main(["run", str(d / "c.yaml"), *TINY, "--out", str(d / "run")]) == 0
    return d / "run"


def test_run_writes_encoder_and_load_run(run_dir):
    spec = json.loads((run_dir / "encoder.json").read_text())
    assert spec["format"] == "clpoison-encoder" and spec["arch"] == "resnet18" and spec["width"] == 4
    assert spec["preprocessing"]["size"] == 32 and len(spec["preprocessing"]["mean"]) == 3
    assert (run_dir / "encoder.safetensors").read_bytes()[:8]  # a safetensors header length
    run = clpoison.load_run(run_dir)
    assert run.metrics["knn_top1"] >= 0 and run.config["method"]["name"] == "simclr"
    assert run.encoder(torch.zeros(2, 3, 32, 32)).shape == (2, spec["feature_dim"])
    enc, spec2 = clpoison.load_encoder(run_dir / "encoder.safetensors")
    assert spec2 == spec
    assert not list(run_dir.parent.glob("*.partial"))


def test_evaluate_encoder_file_same_knn(run_dir, capsys):
    knn = json.loads((run_dir / "results.json").read_text())["metrics"]["knn_top1"]
    capsys.readouterr()
    assert main(["evaluate", str(run_dir / "encoder.safetensors")]) == 0
    assert abs(json.loads(capsys.readouterr().out)["knn_top1"] - knn) < 1e-6


def test_evaluate_torchvision_state_dict(run_dir, tmp_path, capsys):
    """A state dict in torchvision's ResNet layout (as solo-learn/lightly save CIFAR ResNets) is scored."""
    knn = json.loads((run_dir / "results.json").read_text())["metrics"]["knn_top1"]
    enc, _ = clpoison.load_encoder(run_dir)
    tv = to_torchvision(enc.state_dict())
    assert "layer1.0.conv1.weight" in tv and "conv1.weight" in tv
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in tv.items()}}, tmp_path / "tv.pth")
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "tv.pth"), "model.stem_stride=2", "data.train_limit=64",
                 "data.test_limit=32", "eval.knn_k=5", "--out", str(tmp_path / "m.json")]) == 0
    assert abs(json.loads(capsys.readouterr().out)["knn_top1"] - knn) < 1e-6
    assert json.loads((tmp_path / "m.json").read_text())["format"] == "torchvision-resnet"


def test_imagenet_stem_resnet18_layout(tmp_path):
    """A 7x7 conv1 (torchvision's ImageNet ResNet-18) maps onto the ImageNet stem; fc is dropped."""
    from clpoison.models.encoder_file import encoder_from_spec
    from clpoison.models.foreign import imagenet_stem
    from clpoison.models import build_backbone

    net = build_backbone("resnet18", 8, 2)
    imagenet_stem(net, 8)
    tv = to_torchvision(net.state_dict())
    mapped, spec = to_clpoison(tv)
    assert spec == {"arch": "resnet18", "width": 8, "stem": "imagenet"}
    torch.save(tv, tmp_path / "r18.pt")
    enc, spec = load_foreign(tmp_path / "r18.pt", None, {})
    x = torch.rand(2, 3, 64, 64)
    assert torch.allclose(enc(x), net.eval()(x), atol=1e-5)
    assert encoder_from_spec(spec, mapped, "x").feature_dim == 64


@pytest.mark.parametrize("content, needle", [
    ({"foo.weight": torch.zeros(2)}, "foo.weight"),
    ({"conv1.weight": torch.zeros(4, 3, 3, 3)}, "layer1"),
    ([1, 2], "list"),
])
def test_foreign_refused_one_line(tmp_path, content, needle):
    torch.save(content, tmp_path / "x.pt")
    with pytest.raises(DataError) as e:
        clpoison.load_encoder(tmp_path / "x.pt")
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_evaluate_encoder_backdoor_asr_from_manifest(run_dir, tmp_path, capsys):
    """An encoder trained anywhere is scored for a backdoor export's trigger (ASR through the linear probe)."""
    out = tmp_path / "ce"
    assert main(["poison", "corruptencoder", "--data", "cifar10-subset", "target=airplane", "poison_count=4",
                 "trigger.size=8", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run_dir / "encoder.safetensors"), "--manifest", str(out / "manifest.json")]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["backdoor_target"] == "airplane" and 0.0 <= m["asr"] <= 1.0 and "asr_clean_accuracy" in m
    # a manifest without a trigger is one line
    assert main(["evaluate", str(run_dir / "encoder.safetensors"), "--manifest", str(run_dir / "results.json")]) == 2


def test_clip_run_encoder_scores_like_the_run(tmp_path, capsys):
    """A CLIP run's encoder.safetensors (the image tower) gives the run's own kNN and linear-probe numbers."""
    out = tmp_path / "clip"
    assert main(["pretrain", "clip", "data.train_limit=64", "data.test_limit=32", "model.width=4", "train.epochs=1",
                 "train.batch_size=32", "eval.knn_k=5", "--no-progress", "--out", str(out)]) == 0
    run = json.loads((out / "results.json").read_text())["metrics"]
    assert json.loads((out / "encoder.json").read_text())["method"] == "clip"
    capsys.readouterr()
    assert main(["evaluate", str(out / "encoder.safetensors")]) == 0
    m = json.loads(capsys.readouterr().out)
    assert abs(m["knn_top1"] - run["knn_top1"]) < 1e-6 and abs(m["linear_top1"] - run["linear_top1"]) < 1e-6
