import pytest
import torch

from attack_fixtures import tiny_caption_splits
from clpoison.contexts import EvalContext
from clpoison.attacks import ATTACKS
from clpoison.attacks.carlini.caption_set import caption_set, matching_rows
from clpoison.attacks.carlini.carlini_backdoor import CarliniBackdoor
from clpoison.attacks.carlini.carlini_targeted import CarliniTargeted
from clpoison.poisoned.manifest import fingerprint, fingerprint_splits, load_trigger, manifest_json, verify
from clpoison.errors import ConfigError, DataError


def backdoor(**kw):
    p = {"target": "airplane", "poison_count": 6, "trigger": {"size": 3}, **kw}
    return CarliniBackdoor(CarliniBackdoor.Params.from_dict(p))


def targeted(**kw):
    return CarliniTargeted(CarliniTargeted.Params.from_dict({"num_targets": 4, "pairs_per_target": 2, **kw}))


# ---------------------------------------------------------------------------------------------------- caption set

def test_caption_set_whole_words_only():
    caps = ["a cat", "concatenate", "Cat-like toy", "the cats", "bobcat", "a kitty", "scatter"]
    assert caption_set(caps, "cat") == ["a cat", "Cat-like toy"]
    assert caption_set(caps, "cat", synonyms=["kitty"]) == ["a cat", "Cat-like toy", "a kitty"]
    assert caption_set(caps, "cat", case_sensitive=True) == ["a cat"]
    assert caption_set(["ice cream cone", "icecream"], "ice cream") == ["ice cream cone"]
    assert matching_rows([["x"], ["my cat"], ["catnip", "a CAT"]], "cat") == [1, 2]
    with pytest.raises(DataError, match="empty"):
        caption_set(caps, "dog")
    assert caption_set([], "dog", source="templates", templates=["a {}"]) == ["a dog"]


# ---------------------------------------------------------------------------------------------------- backdoor

def test_backdoor_poisons_count_with_caption_set_and_trigger():
    splits = tiny_caption_splits()
    before = fingerprint_splits(splits)
    atk = backdoor()
    res = atk.poison(splits, seed=0)
    assert fingerprint_splits(splits) == before  # input untouched
    m = res.manifest
    idx = m["poisoned_indices"]
    assert len(idx) == 6 and len(res.splits.train) == len(splits.train) and m["added_indices"] == []
    pool = set(caption_set([c for cs in splits.train.captions for c in cs], "airplane"))
    tr = res.splits.train
    for i in range(len(tr)):
        if i in idx:
            assert len(tr.captions[i]) == 1 and tr.captions[i][0] in pool
            assert "catalogue" not in tr.captions[i][0]
            diff = (tr.images[i] != splits.train.images[i]).any(0)
            assert int(diff.sum()) <= 9 and bool(diff.any())  # only the 3x3 patch changed
        else:
            assert torch.equal(tr.images[i], splits.train.images[i]) and tr.captions[i] == splits.train.captions[i]
    assert torch.equal(load_trigger(m).patch, atk.trigger.patch)
    verify(m, splits, res.splits)
    with pytest.raises(DataError):
        verify(m, res.splits)


def test_backdoor_rate_label_consistent_and_control():
    splits = tiny_caption_splits()
    res = backdoor(poison_count=None, poison_rate=0.1, selection="label-consistent").poison(splits, 0)
    idx = res.manifest["poisoned_indices"]
    assert len(idx) == 6 and all(int(splits.train.labels[i]) == 0 and i != 0 for i in idx)
    ctrl = backdoor(poison_count=0).poison(splits, 0)
    assert ctrl.manifest["poisoned_indices"] == [] and fingerprint(ctrl.splits.train) == fingerprint(splits.train)


def test_backdoor_off_target_selection():
    """off-target: no poison on a row that already is the target (by label, or by a caption naming it); unlabelled
    data is filtered by captions alone; asking for more poisons than such rows is one ConfigError."""
    splits = tiny_caption_splits()
    idx = backdoor(poison_count=20, selection="off-target").poison(splits, 0).manifest["poisoned_indices"]
    assert len(idx) == 20 and all(int(splits.train.labels[i]) != 0 for i in idx)
    unlabelled = tiny_caption_splits()
    unlabelled.train.labels, unlabelled.train.class_names = None, []
    idx = backdoor(poison_count=40, selection="off-target").poison(unlabelled, 0).manifest["poisoned_indices"]
    assert len(idx) == 40 and not set(idx) & set(matching_rows(unlabelled.train.captions, "airplane"))
    with pytest.raises(ConfigError, match="off-target selection"):
        backdoor(poison_count=55, selection="off-target").poison(tiny_caption_splits(), 0)


def test_manifest_deterministic_and_seed_dependent():
    splits = tiny_caption_splits()
    a = manifest_json(backdoor().poison(splits, 3).manifest)
    b = manifest_json(backdoor().poison(tiny_caption_splits(), 3).manifest)
    c = manifest_json(backdoor().poison(splits, 4).manifest)
    assert a == b and a != c
    assert "time" not in a.lower().replace("times", "")


def test_backdoor_evaluate_uses_same_trigger():
    splits = tiny_caption_splits()
    atk = backdoor()
    atk.poison(splits, 0)
    seen = []

    def classify(x):
        seen.append(x)
        return torch.zeros(len(x), dtype=torch.long)

    out = atk.evaluate(EvalContext(splits=splits, classify=classify, embed=lambda x: x.float().flatten(1)))
    assert out["asr"] == 1.0 and out["asr_n"] == 20 and "backdoor_zscore" in out
    trig = seen[-1]  # the triggered non-target test images carry the exact patch
    m = atk.trigger.mask(splits.test.images[splits.test.labels != 0], atk.params.eval_seed)
    assert torch.equal(trig[0][:, m[0]].view(3, 3, 3), atk.trigger.patch)


@pytest.mark.parametrize("params,err,match", [
    ({"target": "zebra"}, ConfigError, "not in the class list"),
    ({"poison_count": 1000}, ConfigError, "only 60"),
    ({"trigger": {"size": 20}}, ConfigError, "larger than"),
    ({"target": "cat", "caption_source": "captions", "synonyms": []}, None, None),
    ({"poison_rate": 0.1}, ConfigError, "only one"),
])
def test_backdoor_bad_input(params, err, match):
    splits = tiny_caption_splits()
    if err is None:
        backdoor(**params).poison(splits, 0)
        return
    with pytest.raises(err, match=match):
        backdoor(**params).poison(splits, 0)


def test_empty_caption_set_and_image_data_rejected():
    splits = tiny_caption_splits()
    for caps in splits.train.captions:
        caps[:] = ["nothing here"]
    with pytest.raises(DataError, match="caption set"):
        backdoor().poison(splits, 0)
    from clpoison.data.datasets import ImageDataset, ImageSplits
    ds = ImageDataset(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.zeros(4), ["airplane"])
    with pytest.raises(ConfigError, match="image-caption"):
        backdoor().poison(ImageSplits(ds, ds), 0)


# ---------------------------------------------------------------------------------------------------- targeted

def test_targeted_victims_come_from_test_split_only():
    splits = tiny_caption_splits()
    res = targeted().poison(splits, 0)
    m = res.manifest
    assert m["targets"]["victim_split"] == "test" and len(m["targets"]["victims"]) == 4
    n0 = len(splits.train)
    assert m["added_indices"] == list(range(n0, n0 + 8)) and m["poisoned_indices"] == []
    train_rows = {splits.train.images[i].numpy().tobytes() for i in range(n0)}
    for v in m["targets"]["victims"]:
        img = splits.test.images[v["test_index"]]
        assert img.numpy().tobytes() not in train_rows  # never a training image
        assert v["true_label"] != v["adversarial_label"]
        for r, c in zip(v["added_indices"], v["captions"]):
            assert torch.equal(res.splits.train.images[r], img)
            assert res.splits.train.captions[r] == [c]
            assert v["adversarial_label"] in c and "catalogue" not in c
    assert torch.equal(res.splits.train.images[:n0], splits.train.images)


def test_targeted_evaluate_and_explicit_labels():
    splits = tiny_caption_splits()
    atk = targeted(adversarial_labels=["dog", "dog", "cat"])
    res = atk.poison(splits, 1)
    victims = [v["test_index"] for v in res.manifest["targets"]["victims"]]
    assert len(victims) == 3 and all(int(splits.test.labels[v]) != 2 for v in victims[:2])
    out = atk.evaluate(EvalContext(splits=splits, classify=lambda x: torch.full((len(x),), 2, dtype=torch.long)))
    assert out["targeted_outcomes"] == [True, True, False] and out["targeted_success_rate"] == pytest.approx(2 / 3)
    assert 0 <= out["targeted_ci95"][0] < 2 / 3 < out["targeted_ci95"][1] <= 1
    # a model calling everything "dog" (2): the two dog victims are chance successes, not learned ones
    assert out["targeted_label_shares"] == [1.0, 1.0, 0.0] and out["targeted_expected_by_chance"] == 2.0
    assert out["targeted_clean_accuracy"] == pytest.approx(float((splits.test.labels == 2).float().mean()))
    ctrl = targeted(pairs_per_target=0).poison(splits, 0)
    assert len(ctrl.splits.train) == len(splits.train) and len(ctrl.manifest["targets"]["victims"]) == 4


def test_targeted_bad_input():
    splits = tiny_caption_splits()
    with pytest.raises(ConfigError, match="not in the class list"):
        targeted(adversarial_labels=["zebra"]).poison(splits, 0)
    with pytest.raises(ConfigError, match="only 30"):
        targeted(num_targets=31).poison(splits, 0)
    with pytest.raises(ConfigError, match="already belong"):
        targeted(victims=[0], adversarial_labels=["airplane"]).poison(splits, 0)


def test_registered():
    assert {"carlini-backdoor", "carlini-targeted"} <= set(ATTACKS.names())
    with pytest.raises(ConfigError, match="unknown key"):
        CarliniBackdoor.Params.from_dict({"targte": "x"})
