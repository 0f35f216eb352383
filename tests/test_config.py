"""Config: presets load and validate; unknown keys and bad values fail before any work."""

import pytest

from clpoison.errors import ConfigError
from clpoison.experiments.config import build_config, list_presets, load_config


def test_every_preset_validates():
    names = list_presets()
    assert {"simclr-small", "simclr-paper", "mocov2-small", "mocov2-paper", "byol-small", "byol-paper"} <= set(names)
    for n in names:
        overrides = ["data.path=."] if "paper" in n else []
        build_config({"preset": n}, overrides)


def test_overrides_apply_and_types_are_checked():
    cfg = build_config({"preset": "simclr-small"}, ["train.epochs=3", "model.width=8", "method.params.temperature=0.2"])
    assert cfg.train.epochs == 3 and cfg.model.width == 8 and cfg.method.params["temperature"] == 0.2
    with pytest.raises(ConfigError, match="train.epochs"):
        build_config({"preset": "simclr-small"}, ["train.epochs=abc"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epochs=0", "train.epochs"),
        ("train.epochs=-3", "train.epochs"),
        ("train.bogus=1", "train.bogus"),
        ("bogus=1", "bogus"),
        ("method.name=nope", "unknown method 'nope'"),
        ("method.params.tau=1", "method.params"),
        ("model.arch=vgg", "unknown backbone"),
        ("data.name=nope", "unknown dataset"),
        ("attack.name=nope", "unknown attack"),
        ("augment.jitter_p=2", "jitter_p"),
        ("train.optimizer=adam", "optimizer"),
        ("data.name=npz", "data.path"),
        ("data.path=/no/such/dir", "does not exist"),
        ("preset=nope", "unknown preset"),
        ("epochs", "key=value"),
    ],
)
def test_bad_values_fail_with_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        build_config({"preset": "simclr-small"}, [override])


def test_method_swap_drops_old_params():
    cfg = build_config({"preset": "simclr-small", "method": {"name": "byol"}})
    assert cfg.method.name == "byol" and cfg.method.params == {}


def test_yaml_errors(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_exponent_without_dot_is_a_number():
    cfg = build_config({"preset": "simclr-small"}, ["train.weight_decay=1e-5"])
    assert cfg.train.weight_decay == 1e-5
