"""The typed contracts between the layers (clpoison.contexts): every component states its modality and an
incompatible method / attack / defense fails in one line before any data is read; epoch hooks see a read-only view
of the training, not the trainer; one reader resolves a run folder's files."""

import dataclasses
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from clpoison.attacks import ATTACKS
from clpoison.contexts import ANY, MODALITIES, EpochView, FilterContext, PoisonContext
from clpoison.defenses import DEFENSES
from clpoison.engine import TrainConfig, Trainer
from clpoison.errors import ConfigError
from clpoison.experiments import sources
from clpoison.experiments.config import build_config, check_modalities
from clpoison.experiments.runner import run_experiment
from clpoison.experiments.tasks import ImageTask, ImageTextTask
from clpoison.methods import METHODS
from clpoison.run_folder import CHECKPOINT, ENCODER, checkpoint_file, holds, run_file
from test_engine import _dataset

COMBOS = [(m, kind, name) for m in METHODS.names() for kind, reg in (("attack", ATTACKS), ("defense", DEFENSES))
          for name in reg.names()]


def test_every_component_states_a_modality():
    for reg in (METHODS, ATTACKS, DEFENSES):
        for name in reg.names():
            assert reg.get(name).modality in (*MODALITIES, *([ANY] if reg is not METHODS else [])), (reg.kind, name)
    assert not hasattr(ATTACKS.get("ssl-backdoor"), "data_kind")  # one attribute, the methods' name for it


def test_check_modalities_refuses_exactly_the_incompatible_pairs():
    refused = 0
    for method, kind, name in COMBOS:
        cfg = SimpleNamespace(method=SimpleNamespace(name=method), attack=SimpleNamespace(name="none"),
                              defense=SimpleNamespace(name="none"))
        setattr(cfg, kind, SimpleNamespace(name=name))
        have, want = (ATTACKS if kind == "attack" else DEFENSES).get(name).modality, METHODS.get(method).modality
        if have in (ANY, want):
            check_modalities(cfg)
            continue
        with pytest.raises(ConfigError) as e:
            check_modalities(cfg)
        msg, refused = str(e.value), refused + 1
        assert "\n" not in msg and f"{kind}.name={name}" in msg and f"method.name={method}" in msg
        assert msg.endswith(")") and "none" in msg  # the fix: the names that fit
    assert refused >= 30  # e.g. simclr + cleanclip, clip + ssl-backdoor, clip + localized-cropping


@pytest.fixture
def no_data(monkeypatch):
    """Any data loader of either task fails the test."""

    def boom(*a, **k):
        raise AssertionError("the data was read")

    for target in (ImageTask, ImageTextTask):
        monkeypatch.setattr(target, "load", boom)
    monkeypatch.setattr(sources, "load_image_source", boom)


def test_incompatible_combination_fails_before_any_data_is_read(no_data, tmp_path):
    with pytest.raises(ConfigError, match=r"defense.name=cleanclip works on image-text data but method.name=simclr"):
        build_config({"preset": "simclr-small", "defense": {"name": "cleanclip"}}, [])
    with pytest.raises(ConfigError, match=r"attack.name=ssl-backdoor works on image data but method.name=clip"):
        build_config({"preset": "clip-small", "attack": {"name": "ssl-backdoor", "params": {"target": "cat"}}}, [])
    cfg = build_config({"preset": "simclr-small"}, [])
    cfg.defense.name = "cleanclip"  # changed after validation: run_experiment checks again, first
    with pytest.raises(ConfigError, match="use a defense for image data"):
        run_experiment(cfg, tmp_path / "run")
    assert not list(tmp_path.iterdir())  # nothing written


def test_incompatible_combination_exits_2_with_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "clpoison", "pretrain", "simclr", "--preset", "small",
                        "defense.name=cleanclip", "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "defense.name=cleanclip" in r.stderr and "method.name=simclr" in r.stderr and not (tmp_path / "run").exists()


def test_hooks_get_a_read_only_view_of_the_training_not_the_trainer():
    from clpoison.data.augment import AugmentConfig, TwoViewAugment
    from clpoison.data.loader import ResidentBatches, TwoViewBatches
    from clpoison.methods import SimCLR
    from clpoison.methods.simclr import SimCLRParams
    from clpoison.models import build_backbone

    seen = []

    def start(view, epoch):
        seen.append(("start", epoch, view))
        with pytest.raises(TypeError):
            view.history[0]["loss"] = 0.0  # a snapshot of the records, not the trainer's lists
        return {"mine": epoch} if epoch else None

    def end(view, epoch):
        seen.append(("end", epoch, view))
        with pytest.raises(dataclasses.FrozenInstanceError):
            view.step = 0
        return {"loss_seen": view.record["loss"]}

    method = SimCLR(build_backbone("convnet", 4), SimCLRParams(proj_hidden_dim=16, proj_dim=8))
    batches = TwoViewBatches(ResidentBatches(_dataset(16), 16, torch.device("cpu"), seed=0),
                             TwoViewAugment(AugmentConfig(out_size=16)))
    cfg = TrainConfig(epochs=2, batch_size=16, lr=0.1, progress=False, checkpoint_every=0)
    tr = Trainer(method, batches, cfg, torch.device("cpu"), None, on_epoch_start=[start], on_epoch_end=[end])
    tr.history.append({"loss": 1.0})  # as if resumed after one epoch
    hist = tr.fit(resume=False)
    views = [v for _, _, v in seen if v is not None]
    assert all(isinstance(v, EpochView) and not isinstance(v, Trainer) for v in views)
    s0, e1, s1, e2 = views
    assert (s0.epoch, e1.epoch, s1.epoch, e2.epoch) == (0, 1, 1, 2) and {v.epochs for v in views} == {2}
    assert (s0.step, e1.step, e2.step, e2.total_steps) == (0, 1, 2, 2)
    assert [dict(h) for h in s1.history] == [{"loss": 1.0}, hist[1]]  # the history up to the hook
    assert e2.record["loss"] == hist[-1]["loss"] == hist[-1]["loss_seen"] and hist[-1]["mine"] == 1


def test_contexts_are_frozen_with_defaults():
    assert PoisonContext().run_dir is None and PoisonContext().echo("x") is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        FilterContext().seed = 1


def test_one_reader_resolves_run_folders(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(ConfigError) as e:
        checkpoint_file(run, "defense.params.checkpoint", "pass a finished CLIP run folder")
    assert str(e.value) == (f"defense.params.checkpoint '{run / CHECKPOINT}' does not exist; pass a finished CLIP "
                            "run folder")
    (run / CHECKPOINT).write_bytes(b"x")
    assert checkpoint_file(run) == checkpoint_file(run / CHECKPOINT) == run / CHECKPOINT
    assert run_file(run, ENCODER) == run / ENCODER and holds(run, CHECKPOINT) and not holds(run, ENCODER)
