"""Hugging Face CLIP directories as clpoison CLIPs (clpoison.models.hf_clip, method hf-clip): the same embeddings as
transformers' own model + processor + tokenizer, pickles refused, the missing extra named, and the CLI paths."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from clpoison.errors import ConfigError

transformers = pytest.importorskip("transformers", reason="transformers is not installed: the optional extra hf (pip install 'clpoison[hf]')")

from clpoison.data.augment import EvalTransform  # noqa: E402
from clpoison.methods.pretrained_clip import HFCLIP, HFCLIPParams  # noqa: E402
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


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Tiny caption data as CSV (60 train / 30 test pairs, 16 px) and its Carlini backdoor export (6 poisons)."""
    from attack_fixtures import tiny_caption_splits
    from test_attacks_cli import write_csv_dataset

    from clpoison.cli import main

    root = tmp_path_factory.mktemp("data")
    train, test = write_csv_dataset(root / "src", tiny_caption_splits(n_train=60, n_test=30, size=16))
    exp = root / "exp"
    assert main(["poison", "carlini-backdoor", "--data", str(train), "--test-path", str(test), "--label-column",
                 "label", "--out", str(exp), "target=airplane", "poison_count=6", "trigger.size=4"]) == 0
    return {"train": train, "test": test, "data": exp / "train.csv", "manifest": exp / "manifest.json"}


def cli(args, capsys):
    from clpoison.cli import main

    capsys.readouterr()
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out) if out.out.lstrip().startswith("{") else out.out


def test_cli_scan_with_the_model(hf_dir, exported, tmp_path, capsys):
    """`clpoison scan HF_DIR`: every pair scored, one column per score, ROC-AUC per score against the manifest."""
    s = cli(["scan", hf_dir, "--data", exported["data"], "--manifest", exported["manifest"], "--out", tmp_path / "a.csv",
             "--score", "kdist", "similarity", "--k", "8"], capsys)
    assert s["ranked_by"] == "checkpoint" and set(s["scores"]) == {"kdist", "similarity"}
    assert s["pairs"] == 60 and s["poisons"] == 6 and all(0 <= v["roc_auc"] <= 1 for v in s["scores"].values())
    assert (tmp_path / "a.csv").read_text().splitlines()[0].split(",")[3:5] == ["kdist", "similarity"]


def test_cli_scan_direction_two_sided(hf_dir, exported, tmp_path, capsys):
    """`--direction two-sided`: each density score becomes its two-sided version (column SCORE_two_sided, its own
    ROC-AUC), the similarity stays; the default writes exactly the CSV of `--direction high`."""
    from clpoison.eval.density import two_sided

    base = ["scan", hf_dir, "--data", exported["data"], "--manifest", exported["manifest"], "--k", "8"]
    s = cli([*base, "--out", tmp_path / "t.csv", "--score", "kdist", "similarity", "--direction", "two-sided"], capsys)
    assert set(s["scores"]) == {"kdist_two_sided", "similarity"} and s["neighbours"]["direction"] == "two-sided"
    rows = (tmp_path / "t.csv").read_text().splitlines()
    assert rows[0].split(",")[3:5] == ["kdist_two_sided", "similarity"]
    cli([*base, "--out", tmp_path / "h.csv", "--score", "kdist"], capsys)
    cli([*base, "--out", tmp_path / "h2.csv", "--score", "kdist", "--direction", "high"], capsys)
    assert (tmp_path / "h.csv").read_bytes() == (tmp_path / "h2.csv").read_bytes()
    by_pair = {}
    for path, col in (("h.csv", "kdist"), ("t.csv", "kdist_two_sided")):
        lines = (tmp_path / path).read_text().splitlines()
        head = lines[0].split(",")
        by_pair[col] = {int(r.split(",")[2]): float(r.split(",")[head.index(col)]) for r in lines[1:]}
    kd = torch.tensor([by_pair["kdist"][i] for i in range(60)], dtype=torch.float64)
    want = two_sided("kdist", kd)  # one caption per image here, so pairs = images
    got = torch.tensor([by_pair["kdist_two_sided"][i] for i in range(60)], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)  # the CSV's 6 decimals
    from clpoison.cli import main

    capsys.readouterr()
    assert main([str(a) for a in [*base, "--out", tmp_path / "x.csv", "--direction", "two-sided"]]) == 2
    assert "density" in capsys.readouterr().err


def test_cli_scan_with_it_as_reference(hf_dir, exported, tmp_path, capsys):
    s = cli(["scan", "--reference", hf_dir, "--data", exported["data"], "--out", tmp_path / "b.csv"], capsys)
    assert s["ranked_by"] == "reference" and s["reference"] == str(hf_dir) and s["pairs"] == 60


def test_cli_evaluate_zero_shot_and_asr(hf_dir, exported, capsys):
    m = cli(["evaluate", hf_dir, "--manifest", exported["manifest"], "data.name=captions-csv",
             f"data.path={exported['train']}", f"data.captions.test_path={exported['test']}",
             "data.captions.label_column=label"], capsys)
    assert 0.0 <= m["asr"] <= 1.0 and 0.0 <= m["zeroshot_top1"] <= 1.0 and "recall_at_1_i2t" in m


def test_cli_finetune_from_model_init(hf_dir, exported, tmp_path, capsys):
    """`clpoison run` of a CLIP config with model.init=HF_DIR fine-tunes the pretrained model (its weights move);
    the run's checkpoint and clip.safetensors scan again."""
    cfg = tmp_path / "ft.yaml"
    cfg.write_text("preset: clip-small\n")
    run = tmp_path / "run"
    cli(["run", cfg, f"model.init={hf_dir}", "data.name=captions-csv", f"data.path={exported['train']}",
         f"data.captions.test_path={exported['test']}", "data.captions.label_column=label", "train.epochs=1",
         "train.batch_size=16", "train.lr=1e-3", "eval.linear=false", "--out", run, "--no-progress"], capsys)
    res = json.loads((run / "results.json").read_text())
    assert res["config"]["model"]["init"] == str(hf_dir) and "zeroshot_top1" in res["metrics"]
    before = HFCLIP(None, HFCLIPParams(path=str(hf_dir))).state_dict()
    after = torch.load(run / "checkpoint.pt", weights_only=True)["model"]
    assert set(before) == set(after) and any(not torch.equal(before[k], after[k]) for k in before)
    for model in (run, run / "clip.safetensors"):
        s = cli(["scan", model, "--data", exported["data"], "--out", tmp_path / "c.csv"], capsys)
        assert s["pairs"] == 60
    from pretrained_fixtures import check_encoder_file

    check_encoder_file(run, "huggingface", hf_dir, {"arch": "hf-clip-vit", "width": 32, "layers": 2, "patch": 8,
                                                    "image_size": 32}, 32, tmp_path)


def test_model_init_is_for_clip_runs():
    from clpoison.experiments.config import build_config

    with pytest.raises(ConfigError, match="model.init"):
        build_config({"preset": "simclr-small"}, ["model.init=/x"])


def test_pickle_that_would_run_code_is_refused(exported, tmp_path, capsys):
    """A .pt whose unpickling would call a function: refused in one line, and the function never runs."""
    from clpoison.cli import main

    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (marker.touch, ())

    torch.save({"visual.conv1.weight": Evil()}, tmp_path / "evil.pt")
    (tmp_path / "c.yaml").write_text("preset: clip-small\n")
    for args in (["scan", tmp_path / "evil.pt", "--data", exported["data"], "--out", tmp_path / "x.csv"],
                 ["evaluate", tmp_path / "evil.pt"],
                 ["run", tmp_path / "c.yaml", f"model.init={tmp_path / 'evil.pt'}", "--out", tmp_path / "r"]):
        capsys.readouterr()
        assert main([str(a) for a in args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "refused" in err[0], err
    assert not marker.exists()


@pytest.mark.parametrize("defense", ["roclip-small", "safeclip-small"])
def test_training_time_defenses_wrap_a_pretrained_clip(hf_dir, exported, tmp_path, capsys, defense):
    """RoCLIP / SafeCLIP fine-tuning of a pretrained CLIP (model.init): the defense wraps its method, the weights
    move and the run's model is the pretrained architecture."""
    cfg = tmp_path / "d.yaml"
    cfg.write_text(f"preset: {defense}\n")
    run = tmp_path / "run"
    cli(["run", cfg, f"model.init={hf_dir}", "data.name=captions-csv", f"data.path={exported['train']}",
         f"data.captions.test_path={exported['test']}", "data.captions.label_column=label", "train.epochs=1",
         "train.batch_size=16", "train.lr=1e-3", "eval.linear=false", "--out", run, "--no-progress"], capsys)
    res = json.loads((run / "results.json").read_text())
    assert res["defense"]["name"] == defense.split("-")[0]
    before = HFCLIP(None, HFCLIPParams(path=str(hf_dir))).state_dict()
    after = torch.load(run / "checkpoint.pt", weights_only=True)["model"]
    assert set(before) == set(after) and any(not torch.equal(before[k], after[k]) for k in before)
