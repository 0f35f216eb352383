"""One CLI style: --version, --threads after the sub-command, --help with description + example + choices,
key=value data options as aliases of the --data flags, demo --out refuses an existing folder, presets --resolved."""

import json

import pytest
import yaml

from attack_fixtures import tiny_caption_splits
from clpoison import __version__
from clpoison.cli import COMMANDS, main
from test_attacks_cli import write_csv_dataset


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"clpoison {__version__}"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_has_description_example_choices(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    assert "example:\n  clpoison " in out and "--threads" in out
    if command == "poison":
        assert "carlini-backdoor" in out and "captions-csv" in out and "captions-tar" in out
    if command == "run":
        assert "simclr" in out and "safeclip" in out


def test_datasets_lists_caption_sources(capsys):
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    assert "captions-csv" in out and "captions-tar" in out and "cifar10-subset" in out


def test_threads_after_subcommand(capsys):
    assert main(["presets", "--threads", "1"]) == 0
    assert "simclr-small" in capsys.readouterr().out


def test_presets_resolved(capsys):
    assert main(["presets", "carlini-backdoor-small", "--resolved"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["attack"]["name"] == "carlini-backdoor" and "train" in cfg and "preset" not in cfg


def test_demo_refuses_existing_out(tmp_path, capsys):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "keep.txt").write_text("mine")
    assert main(["demo", "--out", str(tmp_path / "d"), "train.epochs=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--overwrite" in err[0]
    assert (tmp_path / "d" / "keep.txt").read_text() == "mine"


def test_poison_data_key_values_alias_flags(tmp_path, capsys):
    train, test = write_csv_dataset(tmp_path / "src", tiny_caption_splits())
    common = ["poison", "carlini-backdoor", "target=airplane", "poison_count=5", "trigger.size=3"]
    assert main([*common, "--data", str(train), "--test-path", str(test), "--label-column", "label",
                 "--image-size", "8", "--seed", "3", "--out", str(tmp_path / "a")]) == 0
    assert main([*common, f"data.name={train}", f"data.captions.test_path={test}", "data.captions.label_column=label",
                 "data.image_size=8", "seed=3", "data.captions.on_error=skip", "--out", str(tmp_path / "b")]) == 0
    a, b = (json.loads((tmp_path / x / "manifest.json").read_text()) for x in "ab")
    assert a == b and a["seed"] == 3


def test_scan_rejects_non_data_key_value(tmp_path, capsys):
    assert main(["scan", "x", "--data", "cifar10-subset", "--out", str(tmp_path / "s.csv"), "train.epochs=1"]) == 2
    assert "train.epochs=1" in capsys.readouterr().err
