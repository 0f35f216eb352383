"""``clpoison run --dry-run``: the plan of clip-rn50-cc3m (streamed shards, ResNet-50, 224 px) on a small folder of
shards — data found, steps, memory, a measured time per step — with nothing written. The towers are narrowed
(ResNet-50 at width 8, a one-layer 64-wide text Transformer): the plan does the same things for any model size
(count, build, measure three steps), and the paper-width towers only made the three measured steps ~50 times dearer."""

import pytest

from clpoison.cli import main

from test_shard_stream import write_shards

pytestmark = pytest.mark.slow


def test_dry_run_clip_rn50_cc3m_on_small_shards(tmp_path, capsys):
    write_shards(tmp_path / "train")
    write_shards(tmp_path / "val", shards=1, per=8)
    (tmp_path / "c.yaml").write_text("preset: clip-rn50-cc3m\n")
    rc = main(["run", str(tmp_path / "c.yaml"), f"data.path={tmp_path}/train/shard-{{000000..000009}}.tar",
               f"data.captions.test_path={tmp_path / 'val'}", "train.batch_size=4", "data.captions.workers=0",
               "model.width=8", "method.params.text_width=64", "method.params.text_layers=1", "method.params.text_heads=2",
               "method.params.embed_dim=64",
               "--out", str(tmp_path / "run"), "--dry-run"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "data: captions-tar: 80 train / 8 test, streamed from 10 shards" in out
    assert "steps: 20 per epoch × 32 epochs = 640" in out
    assert "model + optimiser state" in out and "measured:" in out and "time estimate:" in out
    assert "arch: resnet50" in out and "stream: true" in out and "image_size: 224" in out  # the resolved config
    assert not (tmp_path / "run").exists() and not (tmp_path / "run.partial").exists()


@pytest.mark.parametrize("preset,streams", [("clip-rn50-cc3m", True), ("carlini-backdoor-paper", True),
                                            ("carlini-targeted-paper", True), ("safeclip-paper", True)])
def test_paper_presets_stream_where_their_method_can(preset, streams):
    """The Carlini paper presets poison the stream (extra shards); SafeCLIP splits the stream by sample ordinal."""
    from clpoison.experiments.config import build_config

    cfg = build_config({"preset": preset}, [])
    assert cfg.data.name == "captions-tar" and cfg.data.captions.stream is streams
