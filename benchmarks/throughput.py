"""Pretraining throughput of the small presets: end-to-end vs the bare backbone vs a per-image DataLoader.

For SimCLR, MoCo v2 and BYOL (small presets, bundled CIFAR-10 subset) this measures, on the current device:

* ``images_per_s`` — the real training step as the engine runs it: uint8 batch gather on the device, batched
  two-view augmentation, forward (backbone + heads + loss), backward, optimiser step, momentum updates;
* ``bare_images_per_s`` — the backbone alone, forward + backward on the same batch shape (2 views per image),
  random input, no augmentation, heads, loss or optimiser: the ceiling the step is compared with;
* ``ratio`` = images_per_s / bare_images_per_s (the two are timed in alternating rounds; medians). For SimCLR
  the step's only extra work over the bare pass is augmentation, heads, loss and the optimiser; MoCo v2 runs its
  key encoder forward-only on one view (ratio can approach 1); BYOL also runs the target network forward on both
  views (its ceiling is ≈ 0.75);
* ``baseline_images_per_s`` — the same training step fed the way most SSL repositories feed it: a
  ``torch.utils.data.DataLoader`` whose dataset applies the same augmentations per image on the CPU, collated into
  batches (the best of ``num_workers`` 0 and 2 is reported, so the baseline is not handicapped).

Usage: ``python benchmarks/throughput.py --out runs/bench/throughput.json [--steps 20] [--threads 2]``
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from clpoison.data.augment import TwoViewAugment, make_sampler
from clpoison.data.image_readers import load_cifar10_subset
from clpoison.data.loader import ResidentBatches, TwoViewBatches
from clpoison.engine.trainer import Trainer
from clpoison.experiments.config import build_config
from clpoison.experiments.tasks import task_for
from clpoison.utils.device import resolve_device
from clpoison.utils.io import atomic_write_json
from clpoison.utils.seed import seed_everything
from clpoison.utils.timing import cycle, forever, interleaved, timed_steps


class PerImageDataset(torch.utils.data.Dataset):
    """Two augmented views of one image, computed per image on the CPU (the usual DataLoader recipe)."""

    def __init__(self, images: torch.Tensor, augment: TwoViewAugment) -> None:
        self.images, self.augment = images, augment

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        v1, v2 = self.augment(self.images[i : i + 1])
        return v1[0], v2[0]


def measure(method_name: str, device: torch.device, steps: int, rounds: int) -> dict:
    cfg = build_config({"preset": f"{method_name}-small"}, ["train.progress=false"])
    splits = load_cifar10_subset()
    seed_everything(0)
    cl = cfg.train.use_channels_last(device, cfg.model.width)
    fmt = torch.channels_last if cl else torch.contiguous_format
    bs = cfg.train.batch_size
    augment = TwoViewAugment(cfg.augment, make_sampler(cfg.augment))
    task = task_for(cfg, device)

    def build_method(_cfg):
        return task.build_method(splits.train)

    # end-to-end, as the engine runs it
    method = build_method(cfg)
    batches = TwoViewBatches(ResidentBatches(splits.train, bs, device, seed=0), augment, channels_last=cl)
    trainer = Trainer(method, batches, cfg.train, device, None)

    # bare backbone forward + backward on the same batch shape
    bb = build_method(cfg).encoder.to(device).to(memory_format=fmt).train()
    x = torch.randn(2 * bs, 3, cfg.augment.out_size, cfg.augment.out_size, device=device).contiguous(memory_format=fmt)
    amp = cfg.train.amp_dtype(device)

    def bare_step(_):
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss = bb(x).float().pow(2).mean()
        loss.backward()
        bb.zero_grad(set_to_none=True)

    sec = interleaved({"e2e": (trainer.train_step, cycle(batches.epoch)), "bare": (bare_step, forever())},
                      rounds, steps, device)
    e2e, bare = bs / sec["e2e"], bs / sec["bare"]

    # baseline: per-image CPU transforms through a DataLoader, same training step
    base = {}
    cpu_aug = TwoViewAugment(cfg.augment, make_sampler(cfg.augment))
    for workers in (0, 2):
        method_b = build_method(cfg)
        tr_b = Trainer(method_b, batches, cfg.train, device, None)
        dl = torch.utils.data.DataLoader(
            PerImageDataset(splits.train.images, cpu_aug), batch_size=bs, shuffle=True, drop_last=True,
            num_workers=workers, persistent_workers=workers > 0, pin_memory=device.type == "cuda",
        )

        def loader_batches():
            while True:
                for v1, v2 in dl:
                    yield {"views": (v1.to(device, non_blocking=True).contiguous(memory_format=fmt),
                                     v2.to(device, non_blocking=True).contiguous(memory_format=fmt))}

        dt = timed_steps(tr_b.train_step, loader_batches(), 2, max(3, steps // 2), device)
        base[workers] = max(3, steps // 2) * bs / dt
    return {
        "images_per_s": round(e2e, 1),
        "bare_images_per_s": round(bare, 1),
        "ratio": round(e2e / bare, 3),
        "baseline_images_per_s": round(max(base.values()), 1),
        "baseline_by_num_workers": {str(k): round(v, 1) for k, v in base.items()},
        "speedup_over_baseline": round(e2e / max(base.values()), 2),
        "batch_size": bs,
        "backbone": f"{cfg.model.arch} width {cfg.model.width} stem stride {cfg.model.stem_stride}",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=8, help="steps per timed round")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds (the median round is reported)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--methods", default="simclr,mocov2,byol")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    res = {}
    for m in args.methods.split(","):
        res[m] = measure(m, device, args.steps, args.rounds)
        print(m, json.dumps(res[m]), flush=True)
    res["environment"] = {
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(0),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "platform": platform.platform(),
        "steps_per_round": args.steps, "rounds": args.rounds,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, res)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
