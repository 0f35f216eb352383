"""Hugging Face CLIP directories as clpoison CLIPs (clpoison.models.hf_clip, method hf-clip): the same embeddings as
transformers' own model + processor + tokenizer, pickles refused, the missing extra named, and the CLI paths."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from clpoison.errors import ConfigError

transformers = pytest.importorskip("transformers")

from clpoison.data.augment import EvalTransform  # noqa: E402
from clpoison.methods.hf_clip import HFCLIP, HFCLIPParams  # noqa: E402
from clpoison.models.hf_clip import (  # noqa: E402
    load_hf_clip, preprocessing, transformers_embeddings, write_tiny_hf_clip)

CAPTIONS = ["a photo of a airplane.", "a photo of a cat", "a blurry photo of a ship, with a long tail of words"]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return write_tiny_hf_clip(tmp_path_factory.mktemp("hf") / "clip", image_size=32, patch=8,
                              words=["airplane", "photo", "cat"])


def reference(hf_dir, images):
    """transformers itself: from_pretrained, its image processor (PIL) and tokenizer."""
    return transformers_embeddings(hf_dir, images, CAPTIONS)


def ours(hf_dir, images):
    m = HFCLIP(None, HFCLIPParams(path=str(hf_dir))).eval()
    pre = preprocessing(hf_dir)
    with torch.no_grad():
        img = m.model.encode_image(EvalTransform(pre["size"], pre["mean"], pre["std"])(images))
        txt = m.model.encode_text(m.tokenizer.encode(CAPTIONS, 77))
    return img, txt


def test_embeddings_and_similarities_match_transformers(hf_dir):
    """Images at the model's size (no resampling): equal to float32 round-off (atol 1e-5)."""
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    (ri, rt), (oi, ot) = reference(hf_dir, images), ours(hf_dir, images)
    torch.testing.assert_close(oi, ri, rtol=0, atol=1e-5)
    torch.testing.assert_close(ot, rt, rtol=0, atol=1e-5)
    torch.testing.assert_close(oi @ ot.T, ri @ rt.T, rtol=0, atol=1e-5)


def test_image_size_follows_the_model(hf_dir, tmp_path):
    """16-px images are up-sampled to the model's 32 px (bilinear + antialias vs the processor's PIL bicubic: close,
    not equal)."""
    images = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    (ri, _), (oi, _) = reference(hf_dir, images), ours(hf_dir, images)
    assert oi.shape == ri.shape and (oi - ri).abs().max() < 0.1


def test_pickled_weights_are_refused(hf_dir, tmp_path):
    d = tmp_path / "pickled"
    d.mkdir()
    (d / "config.json").write_text((hf_dir / "config.json").read_text())
    torch.save({"x": torch.zeros(1)}, d / "pytorch_model.bin")
    with pytest.raises(ConfigError, match="pickle") as e:
        load_hf_clip(d)
    assert "\n" not in str(e.value)


def test_missing_transformers_names_the_extra(hf_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ConfigError, match=r"clpoison\[hf\]"):
        load_hf_clip(hf_dir)


def test_weights_that_do_not_fit_the_config_are_one_line(hf_dir, tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    cfg = json.loads((hf_dir / "config.json").read_text())
    cfg["projection_dim"] = 16
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "model.safetensors").write_bytes((hf_dir / "model.safetensors").read_bytes())
    with pytest.raises(ConfigError):
        load_hf_clip(d)


@pytest.mark.slow
def test_hf_clip_through_the_cli(hf_dir, tmp_path, capsys):
    """scan (as the model, as --reference, with density scores), evaluate with a manifest's trigger, and a short
    fine-tuning run (hf-clip-finetune) whose checkpoint scans again."""
    from attack_fixtures import tiny_caption_splits
    from test_attacks_cli import write_csv_dataset

    from clpoison.cli import main

    train, test = write_csv_dataset(tmp_path / "src", tiny_caption_splits(n_train=60, n_test=30, size=16))
    exp = tmp_path / "exp"
    assert main(["poison", "carlini-backdoor", "--data", str(train), "--test-path", str(test), "--label-column",
                 "label", "--out", str(exp), "target=airplane", "poison_count=6", "trigger.size=4"]) == 0
    capsys.readouterr()
    assert main(["scan", str(hf_dir), "--data", str(exp / "train.csv"), "--manifest", str(exp / "manifest.json"),
                 "--out", str(tmp_path / "a.csv"), "--score", "kdist", "similarity", "--k", "8"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["ranked_by"] == "checkpoint" and set(s["scores"]) == {"kdist", "similarity"} and s["pairs"] == 60 and s["poisons"] == 6
    header = (tmp_path / "a.csv").read_text().splitlines()[0].split(",")
    assert header[3:5] == ["kdist", "similarity"]
    assert main(["scan", "--reference", str(hf_dir), "--data", str(exp / "train.csv"), "--out", str(tmp_path / "b.csv")]) == 0
    assert json.loads(capsys.readouterr().out)["ranked_by"] == "reference"
    assert main(["evaluate", str(hf_dir), "--manifest", str(exp / "manifest.json"), "data.name=captions-csv",
                 f"data.path={train}", f"data.captions.test_path={test}", "data.captions.label_column=label"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert 0.0 <= m["asr"] <= 1.0 and "zeroshot_top1" in m
    cfg = tmp_path / "ft.yaml"
    cfg.write_text("preset: hf-clip-finetune\n")
    run = tmp_path / "run"
    assert main(["run", str(cfg), f"method.params.path={hf_dir}", "data.name=captions-csv", f"data.path={train}",
                 f"data.captions.test_path={test}", "data.captions.label_column=label", "train.epochs=1",
                 "train.batch_size=16", "--out", str(run), "--no-progress"]) == 0
    capsys.readouterr()
    before = HFCLIP(None, HFCLIPParams(path=str(hf_dir))).state_dict()
    after = torch.load(run / "checkpoint.pt", weights_only=True)["model"]
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the weights moved
    assert main(["scan", str(run), "--data", str(exp / "train.csv"), "--out", str(tmp_path / "c.csv")]) == 0
