import csv
import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from attack_fixtures import tiny_caption_splits
from clpoison.poisoned.manifest import load_trigger, verify
from clpoison.cli import main


def write_csv_dataset(root, splits):
    """The tiny caption data as train.csv / test.csv (filepath,title,label) + PNGs."""
    for name, ds in (("train", splits.train), ("test", splits.test)):
        (root / name).mkdir(parents=True)
        rows = [["filepath", "title", "label"]]
        for i in range(len(ds)):
            Image.fromarray(ds.images[i].permute(1, 2, 0).numpy()).save(root / name / f"{i}.png")
            rows += [[f"{name}/{i}.png", c, ds.class_names[int(ds.labels[i])]] for c in ds.captions[i]]
        with open(root / f"{name}.csv", "w", newline="") as f:
            csv.writer(f).writerows(rows)
    return root / "train.csv", root / "test.csv"


@pytest.fixture
def csv_data(tmp_path):
    return write_csv_dataset(tmp_path / "src", tiny_caption_splits())


def run(args, capsys):
    code = main(args)
    return code, capsys.readouterr()


def test_poison_backdoor_export_roundtrip(csv_data, tmp_path, capsys):
    from clpoison.data.captions.caption_readers import CaptionDataConfig, load_caption_splits

    train, test = csv_data
    src_hash = hashlib.sha256(train.read_bytes()).hexdigest()
    out = tmp_path / "out"
    args = ["poison", "carlini-backdoor", "--data", str(train), "--test-path", str(test), "--label-column", "label",
            "--image-size", "8", "--out", str(out), "target=airplane", "poison_count=5", "trigger.size=3"]
    code, io = run(args, capsys)
    assert code == 0, io.err
    assert sorted(p.name for p in out.iterdir()) == ["SHA256SUMS", "images", "manifest.json", "test.csv",
                                                     "test_triggered.csv", "train.csv", "trigger.png"]
    assert hashlib.sha256(train.read_bytes()).hexdigest() == src_hash  # source untouched
    m = json.loads((out / "manifest.json").read_text())
    assert len(m["poisoned_indices"]) == 5 and m["params"]["trigger"]["size"] == 3
    trig = load_trigger(m)
    png = np.asarray(Image.open(out / "trigger.png"))
    assert (png == trig.patch.permute(1, 2, 0).numpy()).all()
    assert hashlib.sha256((out / "trigger.png").read_bytes()).hexdigest() == m["trigger"]["png_sha256"]
    # the export reads back as the exact poisoned training split recorded in the manifest
    cfg = CaptionDataConfig(label_column="label", test_path=str(out / "test.csv"))
    back = load_caption_splits("captions-csv", str(out / "train.csv"), cfg, 8, 0)
    verify(m, output=back)
    # same seed and input → byte-identical manifest
    code, _ = run(args[:-4] + [str(tmp_path / "out2")] + args[-3:], capsys)
    assert code == 0 and (tmp_path / "out2" / "manifest.json").read_bytes() == (out / "manifest.json").read_bytes()


def test_poison_targeted_export(csv_data, tmp_path, capsys):
    train, test = csv_data
    out = tmp_path / "t"
    code, io = run(["poison", "carlini-targeted", "--data", str(train), "--test-path", str(test), "--label-column",
                    "label", "--image-size", "8", "--out", str(out), "num_targets=3", "pairs_per_target=2"], capsys)
    assert code == 0, io.err
    m = json.loads((out / "manifest.json").read_text())
    assert len(m["added_indices"]) == 6 and m["trigger"] is None and not (out / "trigger.png").exists()
    assert len((out / "train.csv").read_text().splitlines()) == 1 + 60 + 6


@pytest.mark.parametrize("extra,match", [
    (["target=zebra"], "not in the class list"),
    (["poison_count=500", "trigger.size=2"], "only 60"),
    (["trigger.size=9"], "larger than"),
    (["NOLABELS", "target=zebra", "trigger.size=2"], "caption set of 'zebra' is empty"),
    (["trigger.pattern=png", "trigger.path=BADPNG"], "unreadable"),
    (["nonsense=1"], "unknown key"),
])
def test_poison_bad_input_exit_2_nothing_written(csv_data, tmp_path, capsys, extra, match):
    train, test = csv_data
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"garbage")
    labels = [] if "NOLABELS" in extra else ["--label-column", "label"]  # unlabelled web data: target is a word
    extra = [e.replace("BADPNG", str(bad)) for e in extra if e != "NOLABELS"]
    out = tmp_path / "never"
    code, io = run(["poison", "carlini-backdoor", "--data", str(train), "--test-path", str(test), *labels,
                    "--image-size", "8", "--out", str(out), "target=airplane", *extra], capsys)
    assert code == 2
    lines = io.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], io.err
    assert not out.exists() and not any(p.name.startswith(".never") for p in tmp_path.iterdir())
