"""What the pretrained-CLIP tests share (tests/test_hf_clip.py, tests/test_openclip_clip.py)."""

from __future__ import annotations

import json

import pytest
import torch


def check_encoder_file(run, fmt, source, tower, dim, tmp_path):
    """The run's encoder.json names the pretrained model it fine-tuned (not the config's nominal model.arch), and the
    encoder file loads as that tower with the fine-tuned weights; moved away, the model is named in one line."""
    import shutil

    import clpoison
    from clpoison.errors import DataError
    from clpoison.methods.pretrained_clip import PretrainedCLIPMethod, PretrainedCLIPParams
    from clpoison.models.encoder_file import load_encoder

    spec = json.loads((run / "encoder.json").read_text())
    assert spec["arch"] == "pretrained-clip" and not {"width", "stem", "stem_stride"} & set(spec)
    assert spec["pretrained"]["format"] == fmt and spec["pretrained"]["path"] == str(source.resolve())
    assert tower.items() <= spec["pretrained"]["image_tower"].items() and spec["feature_dim"] == dim
    tuned = PretrainedCLIPMethod(None, PretrainedCLIPParams(path=str(source))).eval()
    tuned.load_state_dict(torch.load(run / "checkpoint.pt", weights_only=True)["model"])
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(clpoison.load_run(run).encoder(x), tuned.model.visual(x), rtol=0, atol=1e-6)
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.copy(run / "encoder.safetensors", moved)
    (moved / "encoder.json").write_text(json.dumps({**spec, "pretrained": {**spec["pretrained"],
                                                                            "path": str(tmp_path / "gone")}}))
    with pytest.raises(DataError, match="not there any more") as e:
        load_encoder(moved)
    assert "\n" not in str(e.value)
