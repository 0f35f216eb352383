"""Regenerate ``openclip_fixture.json``: features that **open_clip's own** image towers compute on seeded weights.

Run with open_clip importable (``pip install open_clip_torch``; or, where its torchvision import fails, with
``--source DIR`` pointing at an unpacked open_clip wheel: its ``modified_resnet.py`` / ``transformer.py`` are loaded
with a stand-in for the one torchvision class they import). ``tests/test_openclip_adapter.py`` rebuilds the same
weights from the same seeds and checks clpoison's adapter gives these features.

    python tests/data/make_openclip_fixture.py [--source /tmp/oc/whl/open_clip]
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_openclip_adapter import CASES, seeded_state, seeded_images  # noqa: E402


def open_clip_modules(source: str | None):
    if source is None:
        return importlib.import_module("open_clip.modified_resnet"), importlib.import_module("open_clip.transformer")
    tv = types.ModuleType("torchvision")
    tv.ops = types.ModuleType("torchvision.ops")
    tv.ops.misc = types.ModuleType("torchvision.ops.misc")
    tv.ops.misc.FrozenBatchNorm2d = torch.nn.BatchNorm2d  # only used by lock(freeze_bn_stats=True)
    sys.modules.update({"torchvision": tv, "torchvision.ops": tv.ops, "torchvision.ops.misc": tv.ops.misc})
    pkg = types.ModuleType("open_clip")
    pkg.__path__ = [source]
    sys.modules["open_clip"] = pkg
    return importlib.import_module("open_clip.modified_resnet"), importlib.import_module("open_clip.transformer")


def build(case: dict, mr, tr) -> torch.nn.Module:
    if case["kind"] == "rn":
        return mr.ModifiedResNet(case["layers"], case["output_dim"], case["heads"], case["image_size"], case["width"])
    act = tr.QuickGELU if case.get("activation") == "quick_gelu" else torch.nn.GELU
    return tr.VisionTransformer(image_size=case["image_size"], patch_size=case["patch"], width=case["width"],
                                layers=case["layers"], heads=case["heads"], mlp_ratio=case["mlp_ratio"],
                                ls_init_value=case.get("ls_init_value"), output_dim=case["output_dim"],
                                act_layer=act)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--source", default=None)
    args = ap.parse_args()
    mr, tr = open_clip_modules(args.source)
    out = {}
    for name, case in CASES.items():
        net = build(case, mr, tr).eval()
        shapes = {k: list(v.shape) for k, v in net.state_dict().items()}
        net.load_state_dict(seeded_state(shapes, case["seed"]))
        with torch.no_grad():
            feats = net(seeded_images(case["image_size"]))
        out[name] = {"shapes": shapes, "features": [[round(float(x), 6) for x in row] for row in feats]}
    path = Path(__file__).with_name("openclip_fixture.json")
    path.write_text(json.dumps(out, indent=0) + "\n")
    print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
