"""Streamed ImageFolder batches: decoded in the training process (``data.stream_workers: 0``) vs in loader workers.

Writes a folder of random JPEGs (``--images``, 160×200), streams one epoch of batches of 64 at 96 px through
:class:`~clpoison.data.image_stream.StreamedImageBatches` with 0 and ``--workers`` workers (alternating rounds), and
sleeps ``--step-ms`` per batch in place of a GPU training step (the CPU idle meanwhile, as while a GPU computes).
With 0 workers decoding and the step take turns; with workers the next batches are decoded during the step.
Reports images/s per round (worker start-up included: the loader starts its workers once per epoch).

Usage: ``python benchmarks/stream_workers.py --out runs/bench/stream_workers.json [--images 768] [--step-ms 40]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from clpoison.data.image_readers import StreamingImageFolder, list_image_files
from clpoison.data.image_stream import StreamedImageBatches
from clpoison.utils.io import atomic_write_json


def write_folder(root: Path, n: int) -> StreamingImageFolder:
    r = np.random.default_rng(0)
    for i in range(n):
        d = root / f"c{i % 4}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(r.integers(0, 256, (160, 200, 3), dtype=np.uint8)).save(d / f"{i}.jpg", quality=90)
    files = list_image_files(root)
    return StreamingImageFolder([(f, int(f.parent.name[1])) for f in files], [f"c{k}" for k in range(4)], 96, "bench")


def one_epoch(ds: StreamingImageFolder, workers: int, step_s: float) -> float:
    batches = StreamedImageBatches(ds, 64, torch.device("cpu"), seed=0, workers=workers)
    t0, n = time.perf_counter(), 0
    for idx, _, _ in batches.epoch(0):
        n += len(idx)
        time.sleep(step_s)  # the training step (a GPU's: the host idles)
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--images", type=int, default=768)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--step-ms", type=float, default=40.0)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        ds = write_folder(Path(tmp), args.images)
        rounds: dict[str, list[float]] = {"0": [], str(args.workers): []}
        for _ in range(args.rounds):
            for w in (0, args.workers):
                rounds[str(w)].append(round(one_epoch(ds, w, args.step_ms / 1000), 1))
    res = {"images_per_s": rounds, "images": args.images, "batch": 64, "image_size": 96, "step_ms": args.step_ms,
           "machine": platform.machine(), "cpus": os.cpu_count()}
    atomic_write_json(Path(args.out), res)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
