"""CLIP benchmarks on another caption set (issue 28): the webcaps tar shards read through the tar path with their
captions and keys, the caption set as config sections (one helper for every CLIP benchmark), the backdoor dose as a
count giving the same poisons as the rate it equals, SafeCLIP's poison trace (each poison's rank per epoch), and the
report's dose plot against counts."""

import io
import itertools
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from clpoison.attacks.carlini.carlini_backdoor import CarliniBackdoor, resolve_count
from clpoison.data.captions.caption_shards import iter_shard_samples, shard_paths
from clpoison.data.image_readers import decode_image
from clpoison.errors import ConfigError
from clpoison.experiments.config import build_config

from _clip import add_caption_args, backdoor_dose, caption_sections, caption_set_name, pooled_rate  # benchmarks/
from attack_fixtures import tiny_caption_splits

torch.set_num_threads(2)
ROOT = Path(__file__).resolve().parents[1]
WEBCAPS = "train-{000000..000003}.tar"


def webcaps_dir():
    """``../shared/data/webcaps`` beside the checkout (or beside the main checkout of a git worktree), else skip."""
    for base in (ROOT.parent, ROOT.parent.parent):
        d = base / "shared" / "data" / "webcaps"
        if (d / "train-000000.tar").is_file():
            return d
    reason = f"no shared/data/webcaps beside {ROOT} (../shared absent): the webcaps shard test is skipped"
    print(reason)
    pytest.skip(reason)


def parse(argv):
    import argparse

    ap = argparse.ArgumentParser()
    add_caption_args(ap)
    return ap.parse_args(argv)


# -- webcaps through the tar path ------------------------------------------------------------------------------

def test_webcaps_shards_read_through_the_tar_path_with_captions_and_keys():
    d = webcaps_dir()
    paths = shard_paths(str(d / WEBCAPS))  # the brace list the benchmarks take
    assert [p.name for p in paths] == [f"train-00000{i}.tar" for i in range(4)]
    got = list(itertools.islice(iter_shard_samples(paths), 40))
    # the same members read directly: KEY.txt is the caption, KEY.json holds it too
    members = {}
    with tarfile.open(paths[0]) as tf:
        for m in itertools.islice(tf, 3 * 40):
            key, ext = m.name.split(".", 1)
            members.setdefault(key, {})[ext] = tf.extractfile(m).read()
    assert [s["key"] for s in got] == list(members)[:40] and len({s["key"] for s in got}) == 40
    for s in got:
        parts = members[s["key"]]
        assert s["captions"] == [parts["txt"].decode("utf-8").strip()]
        assert s["captions"][0] == json.loads(parts["json"])["caption"].strip()
        assert s["ext"] == "jpg" and s["image"] == parts["jpg"]
    img = decode_image(io.BytesIO(got[0]["image"]), 32)
    assert img.shape == (3, 32, 32) and img.dtype == torch.uint8 and img.float().std() > 0
    # the benchmarks' data section for these shards builds a valid run config
    args = parse(["--captions", str(d / WEBCAPS), "--test-captions", str(d / "test-000000.tar")])
    cfg = build_config({"preset": "carlini-backdoor-small", **caption_sections(args), "name": "x"}, [])
    assert cfg.data.name == "captions-tar" and cfg.data.path == str(d / WEBCAPS)
    assert cfg.data.captions.test_path == str(d / "test-000000.tar")
    assert caption_set_name(args) == "webcaps"


# -- the caption set as config sections --------------------------------------------------------------------------

def test_caption_sections_bundled_file_and_errors():
    assert caption_sections(parse([])) == {}  # the bundled default: the presets' data, the same run configs
    assert caption_sections(parse([]), always=True) == {
        "data": {"name": "cifar10-subset"}, "eval": {"sets": {"labelled": {"data": "cifar10-subset", "split": "test"}}}}
    s = caption_sections(parse(["--captions", "pairs.csv", "--label-column", "label", "--eval-set", "x.npz"]))
    assert s == {"data": {"name": "captions-csv", "path": "pairs.csv", "captions": {"label_column": "label"}},
                 "eval": {"sets": {"labelled": {"data": "x.npz", "split": "test"}}}}
    assert caption_set_name(parse(["--captions", "d/webcaps/t.tar", "--caption-set", "mine"])) == "mine"
    assert caption_set_name(parse([])) == "cifar10-subset"
    with pytest.raises(ConfigError, match="need --captions FILE"):
        caption_sections(parse(["--test-captions", "t.tar"]))
    with pytest.raises(ConfigError, match="exactly one"):
        backdoor_dose(rate=0.01, count=5)


def test_pooled_rate_is_the_wilson_interval_of_the_pooled_hits():
    from clpoison.eval.attack_metrics import wilson_interval

    r = pooled_rate([{"asr": 0.5, "asr_hits": 5, "asr_n": 10}, {"asr": 0.9, "asr_hits": 9, "asr_n": 10}], "asr")
    assert r["mean"] == pytest.approx(0.7) and r["hits"] == 14 and r["trials"] == 20
    assert r["ci95"] == pytest.approx(list(wilson_interval(14, 20)))
    assert pooled_rate([{"targeted_success_rate": 0.5}], "targeted_success_rate")["ci95"] is None


def test_cleanclip_search_settings_and_choice():
    from _clip import choose_cleanclip, cleanclip_overrides, cleanclip_variants

    assert cleanclip_variants(None, None) == {"": ()} and cleanclip_overrides(()) == []
    v = cleanclip_variants([10, 40], [2000])
    assert v == {"_e10_p2000": (10, 2000), "_e40_p2000": (40, 2000)}
    assert cleanclip_variants(None, [500]) == {"_e10_p500": (10, 500)}  # the preset's 10 epochs
    assert cleanclip_overrides(v["_e40_p2000"]) == ["train.epochs=40", "defense.params.finetune_pairs=2000"]
    search = {"_e10_p1000": {"asr": 0.9, "zeroshot": 0.30, "epochs": 10, "pairs": 1000},
              "_e40_p1000": {"asr": 0.15, "zeroshot": 0.29, "epochs": 40, "pairs": 1000},
              "_e20_p4000": {"asr": 0.12, "zeroshot": 0.30, "epochs": 20, "pairs": 4000},
              "_e40_p4000": {"asr": 0.05, "zeroshot": 0.20, "epochs": 40, "pairs": 4000}}  # cleans, costs zero-shot
    tag, why = choose_cleanclip(search, clean_asr=0.08, clip_zs=0.31)
    assert tag == "_e40_p1000" and why.startswith("the cheapest")  # 40k pair-epochs < 80k
    tag, why = choose_cleanclip(search, clean_asr=0.0, clip_zs=0.31)
    assert tag == "_e40_p4000" and why.startswith("no setting")


# -- counts and rates --------------------------------------------------------------------------------------------

def test_counts_and_rates_give_the_same_poisons_where_they_coincide():
    splits = tiny_caption_splits()  # 60 training pairs
    for count, rate in ((6, 0.1), (3, 0.05), (1, 0.01)):  # 0.01 * 60 rounds to 1 (a positive rate gives >= 1)
        by_count = CarliniBackdoor(CarliniBackdoor.Params(target="cat", poison_count=count, trigger={"size": 2}))
        by_rate = CarliniBackdoor(CarliniBackdoor.Params(target="cat", poison_rate=rate, trigger={"size": 2}))
        a, b = by_count.poison(splits, seed=3), by_rate.poison(splits, seed=3)
        assert a.manifest["poisoned_indices"] == b.manifest["poisoned_indices"]
        assert len(a.manifest["poisoned_indices"]) == count
        assert torch.equal(a.splits.train.images, b.splits.train.images)
        assert a.splits.train.captions == b.splits.train.captions
    # the benchmarks' override pairs: 54 poisons of the bundled 5,438 pairs are the preset's 1 %
    cfgs = [build_config({"preset": "carlini-backdoor-small", "name": "x"}, ov)
            for ov in (backdoor_dose(count=54)[0], backdoor_dose(rate=0.01)[0])]
    p = [c.attack.params for c in cfgs]
    assert resolve_count(p[0]["poison_rate"], p[0]["poison_count"], 5438) == 54
    assert resolve_count(p[1]["poison_rate"], p[1].get("poison_count"), 5438) == 54


# -- SafeCLIP's poison trace -------------------------------------------------------------------------------------

TINY = ["train.epochs=4", "train.batch_size=64", "train.warmup_epochs=0", "model.width=4",
        "method.params.text_width=16", "method.params.text_layers=1", "method.params.text_heads=2",
        "method.params.embed_dim=16", "method.params.vocab_size=300", "data.train_limit=128", "data.test_limit=32",
        "eval.random_init_control=false", "attack.params.poison_rate=0.05", "attack.params.zscore_images=32",
        "train.progress=false",
        "defense.name=safeclip", "defense.params.inmodal_epochs=1", "defense.params.crossmodal_epochs=1",
        "defense.params.warmup_epochs=0.5", "defense.params.eval_batch_size=256", "defense.params.histograms=false",
        "defense.params.split_every=2", "defense.params.trace_warmup=true"]


@pytest.mark.slow
def test_safeclip_trace_records_each_poisons_rank(tmp_path, capfd):
    from clpoison.defenses.safeclip.safeclip_trace import rank_fractions, read_trace
    from clpoison.experiments.runner import run_experiment

    res = run_experiment(build_config({"preset": "carlini-backdoor-small"}, TINY), tmp_path / "run")
    poisons = json.loads((tmp_path / "run" / "manifest.json").read_text())["poisoned_indices"]
    trace = read_trace(tmp_path / "run")
    # warm-up epoch 2 (trace_warmup: scored as a split would), then the two filtering epochs; epoch 1 has no model yet
    assert [(e["epoch"], e["phase"]) for e in trace] == [(2, "crossmodal"), (3, "filtered"), (4, "filtered")]
    with np.load(tmp_path / "run" / "safeclip" / "last_scores.npz") as z:  # epoch 3's pass, re-cut in epoch 4
        sims = z["sims"]
    assert len(sims) == 128 and len(poisons) == 6
    for e in trace:
        assert e["poisons"] == poisons and len(e["rank"]) == len(e["risky"]) == len(poisons)
        assert all(0 <= r < 1 for r in e["rank"])
    for e in trace[1:]:  # the filtering epochs: the ranks are those of the split's own scores
        assert e["rank"] == pytest.approx(rank_fractions(sims)[poisons].tolist(), abs=1e-5)
    hist = {h["epoch"]: h for h in res["history"]}
    for e in trace[1:]:  # risky flags agree with the split's own poison count and recall
        assert sum(e["risky"]) == hist[e["epoch"]]["safeclip_poisons_in_risky"]
        assert e["recall"] == pytest.approx(hist[e["epoch"]]["safeclip_poison_recall_risky"])
        assert hist[e["epoch"]]["safeclip_poison_rank_median"] == pytest.approx(np.median(e["rank"]), abs=1e-5)
    assert res["defense"]["poison_trace"] == "safeclip/poison_trace.jsonl"
    assert res["defense"]["poison_recall_by_epoch"] == {str(e["epoch"]): pytest.approx(e["recall"], abs=1e-6)
                                                        for e in trace}
    err = capfd.readouterr().err
    assert "safeclip epoch 3 (filtered): poisons in the risky set" in err and "median poison rank" in err


def test_rank_fractions_and_a_resumed_trace_keep_earlier_epochs(tmp_path):
    from clpoison.defenses.safeclip.safeclip_trace import PoisonTrace, rank_fractions, read_trace

    sims = np.array([0.2, 0.9, -0.1, 0.5])
    assert rank_fractions(sims).tolist() == [0.5, 0.0, 0.75, 0.25]
    path = tmp_path / "safeclip" / "poison_trace.jsonl"
    t = PoisonTrace(np.array([0, 2]), path)
    for ep in (2, 3, 4):
        t.record(ep, "filtered", sims, np.array([2]), 0.5)
        t.write()
    resumed = PoisonTrace(np.array([0, 2]), path)  # resumed at epoch 4 (0-based 3): epochs 1..3 stay, 4.. rewritten
    resumed.record(3, "filtered", sims, np.array([0, 2]), 0.5)
    resumed.write()
    got = read_trace(path)
    assert [e["epoch"] for e in got] == [3, 4] and got[-1]["risky"] == [1, 1] and got[0]["risky"] == [0, 1]


# -- the report's dose plot against counts -----------------------------------------------------------------------

def count_run(folder, name, seed, count, hits, attack="carlini-backdoor"):
    params = {"target": "airplane", "poison_rate": None, "poison_count": count} if count is not None else {}
    cfg = {"name": name, "seed": seed, "method": {"name": "clip"}, "defense": {"name": "none", "params": {}},
           "attack": {"name": attack, "params": params}, "train": {"epochs": 4}}
    res = {"name": name, "config": cfg, "metrics": {"zeroshot_top1": 0.5, "asr": hits / 900, "asr_hits": hits,
                                                    "asr_n": 900},
           "timings": {"total_s": 1.0}, "environment": {}, "history": [{"epoch": 1, "loss": 1.0}]}
    (folder / name).mkdir(parents=True)
    (folder / name / "results.json").write_text(json.dumps(res))


def test_report_dose_plot_takes_counts_on_its_axis(tmp_path):
    from clpoison.report.aggregate import settings
    from clpoison.report.collect import find_runs
    from clpoison.report.figures import asr_vs_rate, poison_count

    d = tmp_path / "runs"
    for s in (0, 1):
        count_run(d, f"clean_s{s}", s, None, 70, attack="carlini-control")
        for n, hits in ((10, 80), (50, 400), (200, 890)):
            count_run(d, f"backdoor_n{n}_s{s}", s, n, hits + s)
    sets = settings(find_runs([d]))
    figs = asr_vs_rate(sets, tmp_path / "auto")  # every run gives a count and no rate: counts
    assert [p.name for _, p in figs] == ["asr_vs_poison_count.png"] and figs[0][1].stat().st_size > 1000
    assert asr_vs_rate(sets, tmp_path / "rate", axis="rate") == []  # no rates to plot
    assert [p.name for _, p in asr_vs_rate(sets, tmp_path / "count", axis="count")] == ["asr_vs_poison_count.png"]
    with pytest.raises(ConfigError, match="dose axis"):
        asr_vs_rate(sets, tmp_path / "x", axis="dose")
    from clpoison.report.document import write_report

    html = write_report([d], tmp_path / "report", dose_axis="count")  # `clpoison report --dose-axis count`
    assert (html.parent / "plots" / "asr_vs_poison_count.png").is_file()
    assert "asr_vs_poison_count.png" in (html.parent / "report.md").read_text()
    with pytest.raises(ConfigError, match="dose axis"):
        write_report([d], tmp_path / "report2", dose_axis="dose")
    # a rate run's count comes from its manifest
    r = next(r for s in sets for r in s.runs if r.path.name == "backdoor_n10_s0")
    assert poison_count(r) == 10
    cfg = json.loads((r.path / "results.json").read_text())
    cfg["config"]["attack"]["params"] = {"poison_rate": 0.01}
    (r.path / "results.json").write_text(json.dumps(cfg))
    (r.path / "manifest.json").write_text(json.dumps({"details": {"poison_count": 54}, "poisoned_indices": [1]}))
    assert poison_count(find_runs([r.path])[0]) == 54


# -- an attack set from the training distribution: web images labelled by their captions ----------------------

def test_labels_from_captions_one_class_none_or_several():
    from clpoison.data.captions.caption_labels import SEVERAL, labels_from_captions

    caps = [["A Dog on grass"], ["a car next to a dog"], ["concatenated dogma"], ["two cats", "a cat"],
            ["the plane lands"], ["an airplane and a plane"]]
    got = labels_from_captions(caps, ["airplane", "automobile", "cat", "dog"],
                               {"automobile": ["car"], "cat": ["cats"], "airplane": ["plane"]}).tolist()
    assert got == [3, SEVERAL, -1, 2, 0, 0]  # case-insensitive, whole words, synonyms, one class named twice
    assert labels_from_captions([["A Dog"]], ["dog", "cat"], case_sensitive=True).tolist() == [-1]
    with pytest.raises(ConfigError, match="'car', which is not one of the class names"):
        labels_from_captions(caps, ["dog", "cat"], {"car": ["auto"]})


def test_an_eval_set_labelled_by_its_captions(tmp_path):
    from clpoison.experiments.eval_sets import load_eval_sets, parse_sets

    ds = tiny_caption_splits().test.subset(range(6))
    ds.captions = [["a dog running"], ["my red car"], ["a sunset"], ["a cat and a dog"], ["two dogs"], ["a kitten"]]
    ds.labels = None
    root = tmp_path
    from PIL import Image

    with open(root / "web.csv", "w") as f:
        f.write("filepath,title\n")
        for i in range(len(ds)):
            Image.fromarray(ds.images[i].permute(1, 2, 0).numpy()).save(root / f"{i}.png")
            f.write(f"{root / f'{i}.png'},{ds.captions[i][0]}\n")
    names = ["automobile", "cat", "dog"]
    sets, key = load_eval_sets({"web": {"data": str(root / "web.csv"), "class_names": names,
                                        "synonyms": {"automobile": ["car"], "dog": ["dogs"], "cat": ["kitten"]}}},
                               None, 8)
    web = sets["web"]
    assert key == "web" and web.labelled and web.captions  # the attack set; retrieval still on its captions
    assert web.data.captions == [["a dog running"], ["my red car"], ["two dogs"], ["a kitten"]]  # none / several out
    assert web.data.labels.tolist() == [2, 0, 2, 1] and web.data.class_names == names
    assert torch.equal(web.data.images[1], sets["web"].data.images[1])
    with pytest.raises(ConfigError, match="label_column .* or class_names .* not both"):
        parse_sets({"w": {"data": "x.csv", "class_names": names, "label_column": "label"}})
    with pytest.raises(ConfigError, match="needs class_names"):
        parse_sets({"w": {"data": "x.csv", "synonyms": {"dog": ["dogs"]}}})
    from clpoison.errors import DataError

    with pytest.raises(DataError, match="only 0 of 6 captions name exactly one"):
        load_eval_sets({"w": {"data": str(root / "web.csv"), "class_names": ["horse", "frog"]}}, None, 8)


def test_attack_set_from_the_test_captions_in_the_benchmarks(tmp_path):
    test, train = tmp_path / "test.tar", tmp_path / "train.tar"
    test.touch()
    train.touch()
    s = caption_sections(parse(["--captions", str(train), "--test-captions", str(test),
                                "--attack-set", "test-captions"]))
    assert s["eval"]["attack_set"] == "web" and s["eval"]["sets"]["labelled"]["data"] == "cifar10-subset"
    web = s["eval"]["sets"]["web"]
    assert web["data"] == str(test) and web["class_names"][0] == "airplane" and "car" in web["synonyms"]["automobile"]
    cfg = build_config({"preset": "carlini-targeted-small", **s, "name": "x"}, [])
    assert cfg.eval.attack_set == "web"
    with pytest.raises(ConfigError, match="--attack-set test-captions need --captions FILE"):
        caption_sections(parse(["--attack-set", "test-captions"]))  # the bundled captions: not silently ignored
    with pytest.raises(ConfigError, match="give --test-captions FILE"):
        caption_sections(parse(["--captions", "d/train.tar", "--attack-set", "test-captions"]))
    # the default keeps the configs (and run names) of the earlier webcaps runs
    assert "attack_set" not in caption_sections(parse(["--captions", "d/train.tar"]))["eval"]
