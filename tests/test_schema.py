"""Typed params: method / attack / defense ``params`` are checked like the rest of the config."""

import pytest

from clpoison.errors import ConfigError
from clpoison.experiments.config import build_config, load_yaml


def test_yaml_reads_exponents_without_a_dot_as_numbers():
    assert load_yaml("a: 2e-3\nb: 1e5\nc: 10\nd: abc\ne: 2.0e-3") == {"a": 0.002, "b": 1e5, "c": 10, "d": "abc", "e": 0.002}
    cfg = build_config({"preset": "safeclip-small"}, ["defense.params.filter_lr=2e-3"])
    assert cfg.defense.params["filter_lr"] == 0.002


@pytest.mark.parametrize("override, match", [
    ("defense.params.filter_lr=abc", "defense.params.filter_lr='abc' must be a number"),
    ("defense.params.inmodal_epochs=1.5", "defense.params.inmodal_epochs=1.5 must be an integer"),
    ("defense.params.bogus=1", "unknown key.*defense.params.bogus"),
    ("attack.params.pairs_per_target=x", "attack.params.pairs_per_target='x' must be an integer"),
    ("method.params.embed_dim=[1]", "method.params.embed_dim"),
])
def test_wrong_param_types_end_in_one_config_error(override, match):
    with pytest.raises(ConfigError, match=match):
        build_config({"preset": "safeclip-small"} if "defense" in override else {"preset": "carlini-targeted-small"},
                     [override])
