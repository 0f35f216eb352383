"""GPU check: the training step on CUDA with bf16 autocast and channels_last, against the bare model.

Two settings, each a few hundred optimiser steps of the engine's real step (uint8 batch gathered on the device,
batched augmentation, forward, loss, backward, optimiser, schedule):

* ``simclr`` — SimCLR, ResNet-18 (CIFAR stem, width 64), 32 px, batch 512;
* ``clip`` — CLIP, ResNet-50-style image tower (width 64, stride-2 stem) and the 12-layer 512-wide causal
  Transformer text tower (context 77), 224 px, batch 128.

For each it writes ``images_per_s`` (the step), ``bare_images_per_s`` (the same model's forward + backward on
ready-made inputs: no augmentation, no optimiser), their ``ratio`` (timed in alternating rounds in one run,
medians; :func:`clpoison.utils.timing.interleaved`) and ``peak_gpu_memory_mb``.

Without CUDA it refuses with one line (exit 2). ``--device cpu --tiny --steps 2`` is the smoke mode the test suite
runs (narrow models, small images and batches; figures meaningless).

Usage: ``python benchmarks/gpu_check.py --out runs/bench/gpu_check.json [--steps 300]``
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path
from typing import Any

import torch

from clpoison.data.augment import AugmentConfig, TwoViewAugment
from clpoison.data.captions import CaptionDataset
from clpoison.data.captions.caption_loader import CaptionBatches, CaptionImageAugment
from clpoison.data.loader import ResidentBatches, TwoViewBatches
from clpoison.engine.trainer import TrainConfig, Trainer
from clpoison.methods.build import build_method
from clpoison.utils.io import atomic_write_json
from clpoison.utils.seed import seed_everything
from clpoison.utils.timing import cycle, forever, interleaved

FULL = {
    "simclr": {"size": 32, "batch": 512, "model": {"arch": "resnet18", "width": 64, "stem_stride": 1}},
    "clip": {"size": 224, "batch": 128, "model": {"arch": "resnet50", "width": 64, "stem_stride": 2},
             "params": {"embed_dim": 1024, "text_tower": "transformer", "text_width": 512, "text_layers": 12,
                        "text_heads": 8, "context_length": 77, "vocab_size": 49408}},
}
TINY = {
    "simclr": {"size": 16, "batch": 8, "model": {"arch": "resnet18", "width": 4, "stem_stride": 1}},
    "clip": {"size": 32, "batch": 8, "model": {"arch": "resnet50", "width": 4, "stem_stride": 2},
             "params": {"embed_dim": 16, "text_tower": "transformer", "text_width": 32, "text_layers": 2,
                        "text_heads": 2, "context_length": 16, "vocab_size": 300}},
}


def _train_cfg(method: str, batch: int, device: torch.device) -> TrainConfig:
    amp = "bf16" if device.type == "cuda" else "off"
    if method == "clip":
        return TrainConfig(epochs=1000, batch_size=batch, optimizer="adamw", lr=5e-4, lr_scaling="none",
                           weight_decay=0.1, warmup_epochs=0, amp=amp, channels_last="on", progress=False)
    return TrainConfig(epochs=1000, batch_size=batch, optimizer="sgd", lr=0.3, warmup_epochs=0, amp=amp,
                       channels_last="on", progress=False)


def _setting(name: str, spec: dict, device: torch.device) -> tuple[Trainer, Any, Any]:
    """``(trainer, batch source, bare step)`` of one setting, on random uint8 data held on the device."""
    g = torch.Generator().manual_seed(0)
    n, size, batch = spec["batch"] * 4, spec["size"], spec["batch"]
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    if name == "simclr":
        method = build_method("simclr", {"temperature": 0.5, "proj_dim": 128}, spec["model"])
        source = TwoViewBatches(ResidentBatches(_Images(images), batch, device), TwoViewAugment(AugmentConfig(out_size=size)),
                                channels_last=True)
    else:
        p = spec["params"]
        method = build_method("clip", p, spec["model"])
        ctx = p["context_length"]
        tokens = torch.zeros(n, ctx, dtype=torch.int64)
        tokens[:, 0] = 2
        tokens[:, 1:ctx // 2] = torch.randint(4, p["vocab_size"], (n, ctx // 2 - 1), generator=g)
        tokens[:, ctx // 2] = 3  # <eot>
        source = CaptionBatches(CaptionDataset(images, [["x"]] * n), tokens, batch, device,
                                augment=CaptionImageAugment(size, "rrc"), channels_last=True)
    trainer = Trainer(method, source, _train_cfg(name, batch, device), device)
    ready = next(iter(source.epoch(0)))  # the bare pass re-uses one prepared batch: no data work at all
    amp = trainer.amp_dtype

    def bare(_: Any) -> None:
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss, _, _ = method.loss(ready)
        loss.backward()
        method.zero_grad(set_to_none=True)

    return trainer, source, bare


class _Images:
    def __init__(self, images: torch.Tensor) -> None:
        self.images, self.sizes = images, None

    def __len__(self) -> int:
        return len(self.images)


def check(name: str, spec: dict, device: torch.device, steps: int, rounds: int) -> dict[str, Any]:
    seed_everything(0)
    trainer, source, bare = _setting(name, spec, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    per_round = max(1, steps // rounds)
    med = interleaved({"step": (trainer.train_step, cycle(source.epoch)), "bare": (bare, forever())},
                      rounds=rounds, steps=per_round, device=device)
    imgs = spec["batch"]
    out = {"batch": imgs, "image_size": spec["size"], "model": spec["model"], "steps": per_round * rounds,
           "images_per_s": round(imgs / med["step"], 1), "bare_images_per_s": round(imgs / med["bare"], 1),
           "ratio": round(med["bare"] / med["step"], 3)}
    if device.type == "cuda":
        out["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/bench/gpu_check.json")
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (smoke test only)")
    ap.add_argument("--steps", type=int, default=300, help="optimiser steps per variant and setting")
    ap.add_argument("--rounds", type=int, default=5, help="alternating timing rounds")
    ap.add_argument("--only", choices=["simclr", "clip"], help="one setting")
    ap.add_argument("--tiny", action="store_true", help="narrow models and small images (smoke test)")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: no CUDA device is visible; the GPU check needs one (pass --device cpu --tiny for a smoke test)",
              file=sys.stderr)
        return 2
    device = torch.device(args.device)
    specs = TINY if args.tiny else FULL
    names = [args.only] if args.only else list(specs)
    res: dict[str, Any] = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
                           "torch": torch.__version__, "amp": "bf16" if device.type == "cuda" else "off",
                           "channels_last": True, "tiny": args.tiny, "results": {}}
    for name in names:
        res["results"][name] = check(name, specs[name], device, args.steps, min(args.rounds, args.steps))
        print(f"{name}: {res['results'][name]}", flush=True)
    atomic_write_json(Path(args.out), res)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
