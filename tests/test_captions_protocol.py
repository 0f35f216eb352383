"""The web-caption protocol (issue 16): scan scores exactly the rows given and checks them against the manifest,
risky cut from the score distribution; evaluation sets apart from the training data; evaluate RUN with the
attack's metrics and the random-init control; subsets; caption sources in `clpoison datasets`."""

import csv
import json

import numpy as np
import pytest
import torch

from clpoison.attacks.carlini.carlini_backdoor import CarliniBackdoor
from clpoison.cli import main
from clpoison.data.captions.caption_readers import CaptionDataConfig, load_caption_splits, read_caption_file
from clpoison.data.datasets import ImageDataset, per_class_subset, random_subset
from clpoison.audit.data_scan import check_manifest_matches, risky_mask, scan_table
from clpoison.errors import ConfigError, DataError
from clpoison.experiments.config import build_config
from clpoison.experiments.eval_sets import parse_sets

from attack_fixtures import tiny_caption_splits

torch.set_num_threads(2)

TINY = ["train.epochs=1", "train.batch_size=64", "train.warmup_epochs=0", "model.width=4",
        "method.params.text_width=16", "method.params.text_layers=1", "method.params.text_heads=2",
        "method.params.embed_dim=16", "method.params.vocab_size=300", "eval.knn_k=10"]


# -- scan: the cut, the manifest check -------------------------------------------------------------------------

def test_risky_cut_from_the_score_distribution():
    sims = np.array([0.5, -0.2, 0.9, 0.1, 0.3, 0.0, 0.8, 0.7, 0.6, 0.4])
    p = np.full(10, 0.95)
    mask, rule = risky_mask(sims, p, top_k=3)
    assert set(np.flatnonzero(mask)) == {1, 5, 3} and rule["similarity_cut"] == pytest.approx(0.1)
    mask, rule = risky_mask(sims, p, risky_fraction=0.2)
    assert set(np.flatnonzero(mask)) == {1, 5} and rule["rule"] == "risky_fraction"
    mask, _ = risky_mask(sims, p)  # default: the lowest 5 % (ceil) -> 1 of 10
    assert np.flatnonzero(mask).tolist() == [1]
    mask, _ = risky_mask(sims, p, threshold=0.9)  # the opt-in posterior rule
    assert not mask.any()
    with pytest.raises(ConfigError, match="only one"):
        risky_mask(sims, p, top_k=2, risky_fraction=0.1)
    text, summary = scan_table(sims, np.arange(10), [f"c{i}" for i in range(10)], np.array([1, 5]), top_k=2)
    assert summary["roc_auc"] == 1.0 and summary["precision"] == 1.0 and summary["recall"] == 1.0
    rows = list(csv.DictReader(text.splitlines()))
    assert [r["index"] for r in rows[:2]] == ["1", "5"] and rows[0]["poison"] == "1"


def test_manifest_check_count_fingerprint_and_clean_data():
    splits = tiny_caption_splits()
    res = CarliniBackdoor(CarliniBackdoor.Params(target="cat", poison_count=5, trigger={"size": 2})).poison(splits, 0)
    check_manifest_matches(res.manifest, res.splits.train, "data")  # the poisoned output: accepted
    with pytest.raises(DataError, match="60 images but .* has 60|has 59 images"):
        check_manifest_matches(res.manifest, res.splits.train.subset(range(59)), "data")
    with pytest.raises(DataError, match="clean data"):
        check_manifest_matches(res.manifest, splits.train, "data")
    other = res.splits.train.subset(range(60))
    other.captions[3] = ["edited"]
    with pytest.raises(DataError, match="does not match"):
        check_manifest_matches(res.manifest, other, "data")


def _write_pairs(root, ds, name):
    """A CSV of (filepath, title, label) rows with PNG images (one row per caption)."""
    from PIL import Image

    (root / name).mkdir(parents=True)
    with open(root / f"{name}.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filepath", "title", "label"])
        for i in range(len(ds)):
            Image.fromarray(ds.images[i].permute(1, 2, 0).numpy()).save(root / name / f"{i}.png")
            for c in ds.captions[i]:
                w.writerow([f"{name}/{i}.png", c, ds.class_names[int(ds.labels[i])]])


COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30),
           "purple": (140, 30, 200), "white": (240, 240, 240), "black": (15, 15, 15), "orange": (250, 140, 20)}


def _colour_pairs(root, name, n, seed):
    """n noisy colour squares captioned with their colour (a concept a tiny CLIP learns in seconds)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / name).mkdir(parents=True)
    with open(root / f"{name}.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filepath", "title", "label"])
        for i in range(n):
            c = list(COLOURS)[i % len(COLOURS)]
            img = np.clip(np.array(COLOURS[c])[None, None] + rng.normal(0, 25, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / name / f"{i}.png")
            w.writerow([f"{name}/{i}.png", f"{rng.choice(['a photo of a', 'look at this', 'my'])} {c} thing", c])


def test_scan_with_a_reference_model_ranks_the_planted_poisons(tmp_path, capsys):
    """`clpoison scan` on an exported poisoned CSV scores exactly its rows (no hold-out, file numbering), and a
    reference model trained on trusted pairs without the poisons ranks the planted ones first (ROC-AUC >= 0.9); a
    manifest that does not match the data (the clean file, a truncated copy) is refused with one line (exit 2).
    The data are colour squares so that the reference learns its concepts in seconds; the same scan on the bundled
    captions is measured by benchmarks/captions_protocol.py (docs/captions_protocol.md)."""
    for name, n, seed in (("trusted", 400, 1), ("train", 200, 2), ("test", 40, 3)):
        _colour_pairs(tmp_path, name, n, seed)
    exp = tmp_path / "exp"
    assert main(["poison", "carlini-backdoor", "--preset", "carlini-backdoor-small", "--data", str(tmp_path / "train.csv"),
                 "--test-path", str(tmp_path / "test.csv"), "--label-column", "label", "--out", str(exp),
                 "target=red", "poison_rate=0.1", "--no-progress"]) == 0
    ref = tmp_path / "ref"  # the reference: trained on the trusted pairs only
    assert main(["pretrain", "clip", *TINY, "train.epochs=30", "data.name=captions-csv",
                 f"data.path={tmp_path / 'trusted.csv'}", "eval.random_init_control=false", "eval.linear=false",
                 "--out", str(ref), "--no-progress"]) == 0
    capsys.readouterr()
    out = tmp_path / "risk.csv"
    assert main(["scan", "--reference", str(ref), "--data", str(exp / "train.csv"), "--out", str(out),
                 "--manifest", str(exp / "manifest.json"), "--top-k", "20"]) == 0
    summary = json.loads(capsys.readouterr().out)
    rows = list(csv.DictReader(out.open()))
    man = json.loads((exp / "manifest.json").read_text())
    assert summary["pairs"] == len(rows) == 200 and summary["poisons"] == 20 == len(man["poisoned_indices"])
    assert sorted(int(r["index"]) for r in rows) == list(range(200))  # every row, in file numbering
    assert {int(r["index"]) for r in rows if r["poison"] == "1"} == set(man["poisoned_indices"])
    assert summary["risky"] == 20 and summary["rule"] == "top_k" and summary["ranked_by"] == "reference"
    assert summary["roc_auc"] >= 0.9 and summary["poisons_in_top_k"] >= 14
    # the reference's clip.safetensors (both towers, tensors only) scores exactly as its run folder does
    assert json.loads((ref / "clip.json").read_text())["format"] == "clpoison-clip"
    assert main(["scan", "--reference", str(ref / "clip.safetensors"), "--data", str(exp / "train.csv"),
                 "--out", str(tmp_path / "risk2.csv"), "--manifest", str(exp / "manifest.json"), "--top-k", "20"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["roc_auc"] == summary["roc_auc"] and (tmp_path / "risk2.csv").read_text() == out.read_text()
    # the same poisoned data exported as webdataset shards: scanned against the same manifest, same ranking
    wds = tmp_path / "exp_wds"
    assert main(["poison", "carlini-backdoor", "--preset", "carlini-backdoor-small", "--data", str(tmp_path / "train.csv"),
                 "--test-path", str(tmp_path / "test.csv"), "--label-column", "label", "--out", str(wds),
                 "--format", "wds", "target=red", "poison_rate=0.1", "--no-progress"]) == 0
    capsys.readouterr()
    shards = sorted((wds / "train").glob("*.tar")) if (wds / "train").is_dir() else sorted(wds.glob("train*.tar"))
    assert shards, sorted(p.name for p in wds.rglob("*"))
    assert main(["scan", "--reference", str(ref), "--data", str(shards[0] if len(shards) == 1 else shards[0].parent),
                 "--out", str(tmp_path / "risk_wds.csv"), "--manifest", str(wds / "manifest.json"), "--top-k", "20"]) == 0
    from_wds = json.loads(capsys.readouterr().out)
    assert from_wds["poisons"] == 20 and abs(from_wds["roc_auc"] - summary["roc_auc"]) < 1e-6
    # the clean file, a truncated copy: refused before any figure, nothing written
    lines = (exp / "train.csv").read_text().splitlines()
    (tmp_path / "short.csv").write_text("\n".join(lines[:-1]) + "\n")
    for data, msg in ((tmp_path / "train.csv", "clean data"), (tmp_path / "short.csv", "199 images")):
        assert main(["scan", "--reference", str(ref), "--data", str(data), "--out", str(tmp_path / "x.csv"),
                     "--manifest", str(exp / "manifest.json")]) == 2
        err = capsys.readouterr().err
        assert msg in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "x.csv").exists()
    assert main(["scan", "--data", str(exp / "train.csv"), "--out", str(tmp_path / "x.csv")]) == 2
    assert "needs a CLIP model" in capsys.readouterr().err


def test_scan_of_the_bundled_captions_with_a_clean_reference(tmp_path, capsys):
    """The bundled captions end to end: the 5 % patch backdoor (carlini-backdoor-small, ``selection=off-target``,
    exported as CSV) is scanned whole (5,438 pairs) by a reference CLIP that never saw the poisons, and the poisons
    rank low. ``off-target``: no poison sits on an image that already is an airplane (an airplane photo captioned
    "airplane" is a correct pair that no alignment score can flag). The reference here is the clip-small recipe
    narrowed (width 8, embedding 32, batch 64) on a seeded 1,024 of the clean pairs for 8 epochs (ROC-AUC 0.754
    measured; chance 0.5); the figure with clip-small on all clean pairs (0.938, the done-when's >= 0.9) is measured
    by benchmarks/scan_selection.py (docs/captions_protocol.md)."""
    exp, ref = tmp_path / "exp", tmp_path / "ref"
    assert main(["poison", "carlini-backdoor", "--preset", "carlini-backdoor-small", "--data", "cifar10-subset",
                 "--out", str(exp), "target=airplane", "poison_rate=0.05", "selection=off-target", "--no-progress"]) == 0
    man = json.loads((exp / "manifest.json").read_text())
    rows = list(csv.DictReader((exp / "train.csv").open(), delimiter="\t"))
    assert len(man["poisoned_indices"]) == 272 and all(rows[i]["label"] != "airplane" for i in man["poisoned_indices"])
    assert main(["pretrain", "clip", "--preset", "small", "data.train_subset=1024", "train.epochs=8",
                 "train.batch_size=64", "train.warmup_epochs=0", "model.width=8", "method.params.embed_dim=32",
                 "eval.linear=false", "eval.random_init_control=false", "--out", str(ref), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["scan", "--reference", str(ref), "--data", str(exp / "train.csv"), "--manifest",
                 str(exp / "manifest.json"), "--out", str(tmp_path / "risk.csv")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["pairs"] == 5438 and summary["poisons"] == 272 and summary["ranked_by"] == "reference"
    assert summary["roc_auc"] >= 0.65, summary


# -- evaluation sets, evaluate RUN, controls --------------------------------------------------------------------

def test_unlabelled_captions_with_a_labelled_eval_set_and_evaluate(tmp_path, capsys):
    """Training captions without labels (and without the label column), retrieval on the caption test split,
    zero-shot / ASR / targeted on the labelled set, random-init controls, skipped metrics recorded; `evaluate`
    reproduces the attack metrics from the manifest and runs the random-init control."""
    clean = load_caption_splits("cifar10-subset", seed=0)
    _write_pairs(tmp_path, clean.train.subset(range(256)), "train")
    _write_pairs(tmp_path, clean.test.subset(range(64)), "test")
    rows = list(csv.reader((tmp_path / "train.csv").open()))  # drop the label column of the training file
    with open(tmp_path / "train.csv", "w", newline="") as f:
        csv.writer(f).writerows(r[:-1] for r in rows)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"preset: carlini-targeted-small\n"
                   f"data: {{name: captions-csv, path: {tmp_path / 'train.csv'}, "
                   f"captions: {{test_path: {tmp_path / 'test.csv'}, label_column: label}}}}\n"
                   "attack: {params: {num_targets: 4, pairs_per_target: 2}}\n"
                   "eval: {sets: {cifar: {data: cifar10-subset, limit: 120}}}\n")
    run = tmp_path / "run"
    assert main(["run", str(cfg), *TINY, "--out", str(run), "--no-progress"]) == 0
    err = capsys.readouterr().err
    res = json.loads((run / "results.json").read_text())
    m, sets = res["metrics"], res["eval_sets"]
    assert res["attack_set"] == "cifar" and res["data"]["train_pairs"] == 256 + 4 * 2  # + the added victim pairs
    assert m["targeted_n"] == 4 and all(v < 120 for v in m["targeted_victims"])  # victims from the labelled set
    for k in ("zeroshot_top1", "recall_at_5_i2t", "zeroshot_top1_random_init", "recall_at_5_i2t_random_init"):
        assert 0.0 <= m[k] <= 1.0, k
    for k in ("zeroshot_top1", "linear_top1", "linear_top1_random_init", "zeroshot_top1_random_init",
              "targeted_success_rate"):
        assert 0.0 <= sets["cifar"][k] <= 1.0, k
    assert "linear_top1" in res["skipped"] and "linear_top1 not measured" in err
    # evaluate: the attack's metrics come back from the manifest; the random-init control is another model
    assert main(["evaluate", str(run), "--out", str(tmp_path / "ev.json")]) == 0
    ev = json.loads((tmp_path / "ev.json").read_text())
    assert ev["metrics"]["targeted_outcomes"] == m["targeted_outcomes"]
    assert ev["metrics"]["zeroshot_top1"] == pytest.approx(m["zeroshot_top1"], abs=1e-6)
    assert main(["evaluate", str(run), "--control", "random-init", "--out", str(tmp_path / "r0.json")]) == 0
    r0 = json.loads((tmp_path / "r0.json").read_text())
    assert r0["control"] == "random-init"
    assert r0["metrics"]["zeroshot_top1"] == pytest.approx(m["zeroshot_top1_random_init"], abs=1e-6)
    assert r0["eval_sets"]["cifar"]["linear_top1"] == pytest.approx(sets["cifar"]["linear_top1_random_init"], abs=1e-6)


def test_eval_sets_config_errors():
    assert parse_sets({"a": "cifar10-subset"})["a"].data == "cifar10-subset"
    with pytest.raises(ConfigError, match="unknown key"):
        build_config({"preset": "clip-small"}, ["eval.sets.a.colour=red", "eval.sets.a.data=cifar10-subset"])
    with pytest.raises(ConfigError, match="needs data"):
        build_config({"preset": "clip-small"}, ["eval.sets.a.split=test"])
    with pytest.raises(ConfigError, match="for CLIP runs"):
        build_config({"preset": "simclr-small"}, ["eval.sets.a.data=cifar10-subset"])


# -- data options -----------------------------------------------------------------------------------------------

def test_seeded_subsets():
    labels = torch.tensor([0] * 20 + [1] * 5 + [2] * 10)  # sorted by class, as an NPZ may be
    ds = ImageDataset(torch.zeros(35, 3, 2, 2, dtype=torch.uint8), labels, ["a", "b", "c"])
    sub = per_class_subset(ds, 6, seed=1)
    assert torch.bincount(sub.labels).tolist() == [6, 5, 6]
    assert torch.equal(per_class_subset(ds, 6, seed=1).labels, sub.labels)
    a = random_subset(ds, 10, 0)
    assert len(a) == 10 and len(random_subset(ds, 99, 0)) == 35 and torch.equal(random_subset(ds, 10, 0).labels, a.labels)
    cfg = build_config({"preset": "simclr-small"}, ["data.train_per_class=7"])
    assert cfg.data.train_per_class == 7
    with pytest.raises(ConfigError, match="only one"):
        build_config({"preset": "clip-small"}, ["data.train_per_class=7", "data.train_subset=10"])
    from clpoison.experiments.tasks import task_for

    task = task_for(build_config({"preset": "simclr-small"}, ["data.train_per_class=30", "data.subset_seed=3"]),
                    torch.device("cpu"))
    assert torch.bincount(task.load().train.labels).tolist() == [30] * 10
    task = task_for(build_config({"preset": "clip-small"}, ["data.train_subset=100"]), torch.device("cpu"))
    assert len(task.load().train) == 100


def test_datasets_lists_and_describes_caption_sources(tmp_path, capsys):
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    assert "captions-csv" in out and "captions-tar" in out
    assert main(["datasets", "describe", "captions-csv"]) == 0
    assert "data.captions.label_column" in json.loads(capsys.readouterr().out)["options"]
    clean = load_caption_splits("cifar10-subset", seed=0)
    _write_pairs(tmp_path, clean.test.subset(range(20)), "pairs")
    assert main(["datasets", "describe", "captions-csv", "--path", str(tmp_path / "pairs.csv")]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["train"]["pairs"] + d["test"]["pairs"] == 20
    ds, _ = read_caption_file("captions-csv", str(tmp_path / "pairs.csv"), CaptionDataConfig(), 32)
    assert len(ds) == 20  # read whole: no hold-out
