"""Poisoning a stream: the Carlini attacks write their poisons as extra tar shards beside untouched clean shards;
the streamed run trains on both, the manifest records them and the attack is evaluated on the labelled set held in
memory; the poisons equal the in-memory attack's; a resumed run reuses them; other attacks and defenses refuse."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from clpoison.contexts import PoisonContext
from clpoison.attacks import ATTACKS
from clpoison.data.shards import shard_edits
from clpoison.data.captions.caption_shards import read_caption_shards, shard_paths
from clpoison.data.captions import CaptionSplits
from clpoison.data.shards.shard_set import StreamingCaptionSet
from clpoison.data.shards.shard_stream import ShardSampleStream, split_shards
from clpoison.errors import ConfigError, DataError
from clpoison.experiments.config import build_config
from clpoison.experiments.runner import run_experiment
from clpoison.experiments.tasks.image_text import ImageTextTask
from clpoison.utils.io import sha256_file

from test_shard_stream import streamed_clip_overrides, write_shards

SHARDS, PER, SIZE = 6, 8, 16
N = SHARDS * PER
BACKDOOR = ["attack.name=carlini-backdoor", "attack.params.target=cat", "attack.params.poison_count=4",
            "attack.params.trigger.size=4", "attack.params.trigger.location=random"]
TARGETED = ["attack.name=carlini-targeted", "attack.params.adversarial_labels=[cat, ship]",
            "attack.params.pairs_per_target=3"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("stream")
    write_shards(d / "train", shards=SHARDS, per=PER)  # captions name cat, dog, ship, car, bird (CIFAR-10 words)
    write_shards(d / "test", shards=1, per=16)
    return d


def _overrides(d: Path, extra: list[str]) -> list[str]:
    return streamed_clip_overrides(d, ["eval.sets.cifar.data=cifar10-subset", "eval.sets.cifar.limit=40",
                                       "eval.sets.cifar.probe=false", *extra])


def _cfg(d: Path, extra: list[str]):
    return build_config({"preset": "clip-small"}, _overrides(d, extra))


def _evaluate(run: Path, tmp: Path) -> dict:
    """``clpoison evaluate RUN``: the attack's metrics again, from the run's manifest."""
    from clpoison.cli import main

    assert main(["evaluate", str(run), "--out", str(tmp / "ev.json")]) == 0
    return json.loads((tmp / "ev.json").read_text())["metrics"]


def _hashes(folder: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(folder.glob("*.tar"))}


def _in_memory(cfg, d: Path):
    """The same attack on the same pairs held in memory (and the streamed splits the run saw)."""
    splits = ImageTextTask(cfg, torch.device("cpu")).load()
    resident, _ = read_caption_shards(d / "train", image_size=SIZE)
    atk = ATTACKS.build(cfg.attack.name, cfg.attack.params)
    return splits, atk.poison(CaptionSplits(resident, splits.test), cfg.seed)


def _check_run(run: Path, clean_before: dict, d: Path, n: int) -> tuple[dict, dict, object]:
    assert _hashes(d / "train") == clean_before  # the clean shards are byte-identical
    res = json.loads((run / "results.json").read_text())
    man = json.loads((run / "manifest.json").read_text())
    shard = run / "poison_shards" / "poison-000000.tar"
    assert [s["file"] for s in man["stream"]["poison_shards"]] == [shard.name]
    assert man["stream"]["poison_shards"][0] == {"file": shard.name, "sha256": sha256_file(shard), "samples": n}
    assert man["stream"]["clean_shards"] == sorted(_hashes(d / "train")) and man["stream"]["clean_samples"] == N
    assert man["added_indices"] == list(range(N, N + n)) and man["poisoned_indices"] == []
    assert res["data"]["train_pairs"] == N + n and res["history"][0]["step"] == (N + n) // 16
    poison, _ = read_caption_shards(shard, image_size=SIZE)
    assert len(poison) == n
    return res, man, poison


def test_streamed_backdoor_run_writes_poison_shards(data, tmp_path):
    d = data
    before = _hashes(d / "train")
    cfg = _cfg(d, BACKDOOR)
    run = tmp_path / "run"
    run_experiment(cfg, run)
    res, man, poison = _check_run(run, before, d, 4)
    assert man["trigger"]["spec"]["size"] == 4 and man["targets"]["target"] == "cat"
    assert all("cat" in c[0].split() for c in poison.captions)
    # the poisons are the in-memory attack's: same rows, same captions, same triggered pixels (the clean copy stays)
    splits, mem = _in_memory(cfg, d)
    rows = mem.manifest["poisoned_indices"]
    assert [s["ordinal"] for s in man["stream"]["sources"]] == rows
    assert torch.equal(poison.images, mem.splits.train.images[rows])
    assert poison.captions == [mem.splits.train.captions[i] for i in rows]
    clean, _ = read_caption_shards(d / "train", image_size=SIZE)
    assert not torch.equal(poison.images, clean.images[rows])  # the trigger is in
    by_shard = {s["shard"] for s in man["stream"]["sources"]}
    assert by_shard <= set(before) and all(s["row"] >= N for s in man["stream"]["sources"])
    m = res["metrics"]
    assert 0.0 <= m["asr"] <= 1.0 and "backdoor_zscore" in m and res["eval_sets"]["cifar"]["asr"] == m["asr"]
    assert _evaluate(run, tmp_path)["asr"] == pytest.approx(m["asr"], abs=1e-6)


def test_streamed_targeted_run_adds_victim_pairs(data, tmp_path):
    d = data
    before = _hashes(d / "train")
    cfg = _cfg(d, TARGETED)
    run = tmp_path / "run"
    run_experiment(cfg, run)
    res, man, poison = _check_run(run, before, d, 6)
    splits = ImageTextTask(cfg, torch.device("cpu")).load()
    victims, adv = ATTACKS.build(cfg.attack.name, cfg.attack.params).choose_targets(splits.test, splits.class_names, 0)
    assert [v["test_index"] for v in man["targets"]["victims"]] == victims  # from the labelled set in memory
    assert [v["adversarial_label"] for v in man["targets"]["victims"]] == ["cat", "ship"]
    assert [v["added_indices"] for v in man["targets"]["victims"]] == [list(range(N, N + 3)), list(range(N + 3, N + 6))]
    native, _ = read_caption_shards(run / "poison_shards", image_size=None)  # written at the victims' own size
    assert torch.equal(native.images, splits.test.images[victims].repeat_interleave(3, 0))
    assert [c[0] for c in poison.captions] == [c for v in man["targets"]["victims"] for c in v["captions"]]
    assert all(w in c[0].split() for c, w in zip(poison.captions, ["cat"] * 3 + ["ship"] * 3))
    m = res["metrics"]
    assert m["targeted_n"] == 2 and m["targeted_victims"] == victims and 0.0 <= m["targeted_success_rate"] <= 1.0
    assert _evaluate(run, tmp_path)["targeted_outcomes"] == m["targeted_outcomes"]


def test_poison_shards_are_reused_when_intact_and_rewritten_when_not(data, tmp_path, monkeypatch):
    d = data
    cfg = _cfg(d, BACKDOOR)
    splits = ImageTextTask(cfg, torch.device("cpu")).load()
    atk = ATTACKS.build(cfg.attack.name, cfg.attack.params)
    first = atk.poison(splits, 0, PoisonContext(run_dir=tmp_path))
    shard = tmp_path / "poison_shards" / "poison-000000.tar"
    written = shard.read_bytes()

    def no_read(*a, **k):
        raise AssertionError("the stream was read again")

    monkeypatch.setattr(shard_edits, "read_samples", no_read)
    again = ATTACKS.build(cfg.attack.name, cfg.attack.params).poison(splits, 0, PoisonContext(run_dir=tmp_path))
    assert again.manifest == first.manifest and len(again.splits.train) == N + 4
    assert again.splits.train.check_added() == {shard.name: sha256_file(shard)}
    shard.write_bytes(written[:-1024])  # damaged: not reused, written again (the same bytes: the draw is seeded)
    with pytest.raises(DataError, match="changed since it was written"):
        again.splits.train.check_added()
    with pytest.raises(AssertionError, match="read again"):
        ATTACKS.build(cfg.attack.name, cfg.attack.params).poison(splits, 0, PoisonContext(run_dir=tmp_path))
    monkeypatch.undo()
    ATTACKS.build(cfg.attack.name, cfg.attack.params).poison(splits, 0, PoisonContext(run_dir=tmp_path))
    assert shard.read_bytes() == written
    with pytest.raises(ConfigError, match="inside a run"):
        atk.poison(splits, 0, PoisonContext())
    params = {**cfg.attack.params, "poison_count": 0}  # the clean control: no shard, the old one removed
    control = ATTACKS.build(cfg.attack.name, params).poison(splits, 0, PoisonContext(run_dir=tmp_path))
    assert len(control.splits.train) == N and control.manifest["stream"]["poison_shards"] == [] and not shard.exists()


def test_resumed_run_reuses_its_poison_shards(data, tmp_path, monkeypatch, capfd):
    """A run stopped after training resumes onto the poison shards it wrote: sha256 checked, nothing redrawn."""
    import clpoison.experiments.stages as stages

    def stop(name):
        if name == "evaluate":
            raise KeyboardInterrupt

    cfg, run = _cfg(data, BACKDOOR), tmp_path / "run"
    monkeypatch.setattr(stages, "fault_point", stop)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, run)
    shard = tmp_path / "run.partial" / "poison_shards" / "poison-000000.tar"
    written, man = shard.read_bytes(), json.loads((tmp_path / "run.partial" / "manifest.json").read_text())
    monkeypatch.undo()
    monkeypatch.setattr(shard_edits, "read_samples", lambda *a, **k: pytest.fail("the poisons were redrawn"))
    capfd.readouterr()
    res = run_experiment(cfg, run)
    assert "resuming from epoch 1/1" in capfd.readouterr().err
    assert (run / "poison_shards" / shard.name).read_bytes() == written
    assert json.loads((run / "manifest.json").read_text()) == man and res["data"]["train_pairs"] == N + 4


def test_rank_split_covers_clean_and_poison_shards(data, tmp_path):
    d = data
    clean = StreamingCaptionSet(d / "train", SIZE)
    poison_caps = [[f"a photo of a cat poison {i}"] for i in range(5)]
    images = torch.randint(0, 256, (5, 3, SIZE, SIZE), dtype=torch.uint8)
    files = shard_edits.write_poison_shards(tmp_path / "p", images, poison_caps)
    both = clean.with_shards([tmp_path / "p" / f["file"] for f in files], [f["sha256"] for f in files], 5, None)
    assert len(both) == N + 5 and len(both.shards) == SHARDS + 1 and both.shards[:SHARDS] == shard_paths(d / "train")
    assert [c for cs in both.captions for c in cs][-5:] == [c[0] for c in poison_caps]  # what the tokenizer reads
    parts = [split_shards(both.shards, r, 2, w, 2) for r in range(2) for w in range(2)]
    flat = [p for part in parts for p in part]
    assert sorted(flat) == sorted(both.shards) and len(flat) == len(set(flat))
    seen = []
    for r in range(2):
        got = [c[0] for _, c in ShardSampleStream(both.shards, SIZE, r, 2, seed=0, epoch=1, shuffle_buffer=4)]
        seen.append(set(got))
    assert not seen[0] & seen[1] and seen[0] | seen[1] == {c for cs in both.captions for c in cs}
    assert both.content_fingerprint() != clean.content_fingerprint()


@pytest.mark.parametrize("extra, msg", [
    (["attack.name=carlini-control"], "use carlini-backdoor, carlini-targeted"),
    ([*BACKDOOR, "defense.name=grayscale"], "defense.name=grayscale works on image data but method.name=clip"),
])
def test_other_attacks_and_defenses_refuse_streams(data, tmp_path, extra, msg):
    with pytest.raises(ConfigError, match=msg) as e:
        run_experiment(_cfg(data, extra), tmp_path / "run")
    assert "\n" not in str(e.value) and not (tmp_path / "run").exists()


@pytest.mark.ddp
@pytest.mark.slow
def test_torchrun_two_processes_stream_the_poison_shards(data, tmp_path):
    """Rank 0 writes the poison shard, rank 1 waits for it and checks its sha256; the 7 shards split over both."""
    import os
    import subprocess
    import sys

    from ddp_helpers import free_port

    (tmp_path / "c.yaml").write_text("preset: clip-small\n")
    before = _hashes(data / "train")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2", "--master_addr",
           "127.0.0.1", "--master_port", str(free_port()), "-m", "clpoison", "run", "c.yaml",
           *_overrides(data, BACKDOOR), "--out", "run", "--no-progress"]
    r = subprocess.run(cmd, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[:3000]
    res, man, _ = _check_run(tmp_path / "run", before, data, 4)
    assert res["environment"]["world_size"] == 2 and 0.0 <= res["metrics"]["asr"] <= 1.0
