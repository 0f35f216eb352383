"""The recorded small settings of issue 27 resolve through preset inheritance to what they claim: nlb-small at the
working patch dose with an attacker that is the victim's own recipe, ctrl-small with the official trigger and a
trace every 25 epochs; the paper presets stay the official recipes."""

from __future__ import annotations

import dataclasses

from clpoison.attacks import ATTACKS
from clpoison.attacks.budget import resolve_budget
from clpoison.attacks.ctrl import CTRL_TRIGGER
from clpoison.attacks.nlb.poison_selection import nlb_budget
from clpoison.experiments.config import build_config, resolve_presets

N_TRAIN = 5438  # the bundled subset's training split
IGNORED = {"epochs", "batch_size", "checkpoint_every", "log_every", "progress", "tensorboard"}


def test_nlb_small_is_the_working_dose_with_the_victims_recipe_as_attacker():
    cfg = build_config({"preset": "nlb-small"})
    d = cfg.to_dict()
    assert d["data"]["exclude_classes"] == [] and d["data"]["name"] == "cifar10-subset"  # in place: not CE's setting
    assert d["model"] == {"arch": "resnet10", "width": 16, "stem_stride": 2, "init": None}  # trained from scratch
    assert d["method"]["params"]["temperature"] == 0.2 and d["train"]["epochs"] == 60
    assert d["eval"]["every_epochs"] == 10
    atk = ATTACKS.build("nlb", d["attack"]["params"])
    p = atk.params
    assert nlb_budget(p.poison_rate, p.poison_count, N_TRAIN, p.clusters) == 489  # 9 %
    assert atk.trigger.spec.to_dict()["size"] == 12 and atk.trigger.spec.to_dict()["location"] == "center"
    assert set(d["attack"]["params"]) <= {f.name for f in dataclasses.fields(p)}  # nothing left of corruptencoder
    # the attacker's encoder: the victim's recipe, for as many epochs as the victim
    s = p.surrogate
    assert p.attacker_epochs == d["train"]["epochs"] and p.attacker_batch_size == d["train"]["batch_size"]
    assert s.method == d["method"] and s.model_config() == {k: v for k, v in d["model"].items() if k != "init"}
    assert s.augment_config() == cfg.augment
    want = {k: v for k, v in d["train"].items() if k not in IGNORED}
    got = dataclasses.asdict(s.train_config(p.attacker_epochs, p.attacker_batch_size))
    assert {k: got[k] for k in want} == want


def test_ctrl_small_is_the_official_trigger_traced_for_250_epochs():
    d = build_config({"preset": "ctrl-small"}).to_dict()
    assert d["data"]["exclude_classes"] == [] and d["model"]["arch"] == "resnet10"
    assert d["method"]["params"]["temperature"] == 0.2
    assert d["train"]["epochs"] == 250 and d["eval"]["every_epochs"] == 25
    assert (d["eval"]["knn_k"], d["eval"]["knn_temperature"]) == (200, 0.1)  # the official kNN monitor
    atk = ATTACKS.build("ctrl", d["attack"]["params"])
    assert atk.trigger.spec.to_dict() == CTRL_TRIGGER and atk.trigger.spec.color == "yuv"
    assert resolve_budget(atk.params.poison_rate, atk.params.poison_count, N_TRAIN, atk.default_rate) == 272  # 5 %


def test_paper_presets_stay_the_official_recipes():
    ctrl = resolve_presets({"preset": "ctrl-paper"})  # validated with a data.path elsewhere
    assert ctrl["train"]["epochs"] == 800 and ctrl["train"]["batch_size"] == 512 and ctrl["model"]["width"] == 64
    assert ctrl["attack"]["params"]["poison_rate"] == 0.01
    assert ATTACKS.build("ctrl", ctrl["attack"]["params"]).trigger.spec.to_dict() == CTRL_TRIGGER
    nlb = resolve_presets({"preset": "nlb-paper"})
    assert nlb["train"]["epochs"] == 500 and nlb["attack"]["params"]["poison_rate"] == 0.6
    assert nlb["attack"]["params"]["trigger"]["pattern"] == "nlb" and nlb["attack"]["params"]["attacker_epochs"] == 500
