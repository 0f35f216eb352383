"""CLIP small-preset benchmark: zero-shot top-1 and retrieval recalls over seeds, wall time, pairs/s, and the ratio of
the pipeline's training throughput to the bare forward+backward of both towers (same batch, random inputs, no data
path, no optimiser).

    python benchmarks/clip_small.py --out runs/bench/clip_small.json --seeds 3 [key=value overrides]

Writes ``{"runs": [...], "summary": {metric: {"mean", "std"}}, "bare_fwd_bwd_pairs_per_s", ...}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from clpoison.experiments.config import build_config
from clpoison.experiments.runner import environment, run_experiment
from clpoison.methods.clip import CLIP, CLIPParams, clip_loss
from clpoison.models import build_backbone

from _harness import stats

KEYS = ("zeroshot_top1", "zeroshot_top1_random_init", "recall_at_1_i2t", "recall_at_5_i2t", "recall_at_10_i2t",
        "recall_at_1_t2i", "recall_at_5_t2i", "recall_at_10_t2i", "linear_top1", "knn_top1")


def bare_fwd_bwd(cfg, steps: int = 10, seq_len: int = 16) -> float:
    """Pairs/s of forward+backward of both towers and the loss on random inputs (no optimiser step)."""
    p = CLIPParams(**{**CLIPParams().__dict__, **cfg.method.params})
    m = CLIP(build_backbone(cfg.model.arch, cfg.model.width, cfg.model.stem_stride), p).train()
    fmt = torch.channels_last if cfg.train.use_channels_last(torch.device("cpu"), cfg.model.width) else torch.contiguous_format
    m = m.to(memory_format=fmt)
    b, s = cfg.train.batch_size, cfg.augment.out_size
    x = torch.randn(b, 3, s, s).contiguous(memory_format=fmt)
    tok = torch.randint(4, p.vocab_size, (b, seq_len))
    tok[:, 0], tok[:, -1] = 2, 3

    def step():
        m.zero_grad(set_to_none=True)
        img, txt, scale = m.model(x, tok)
        clip_loss(img, txt, scale).backward()

    for _ in range(2):
        step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * b / (time.perf_counter() - t)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    runs = []
    for seed in range(a.seeds):
        cfg = build_config({"preset": "clip-small"}, [f"seed={seed}", "train.progress=false", *a.overrides])
        with tempfile.TemporaryDirectory() as d:
            t = time.perf_counter()
            res = run_experiment(cfg, Path(d) / "run")
            wall = time.perf_counter() - t
        row = {"seed": seed, "wall_s": wall, "pretrain_s": res["timings"]["pretrain_s"],
               "pairs_per_s": res["throughput"]["pretrain_pairs_per_s"], **{k: res["metrics"].get(k) for k in KEYS}}
        runs.append(row)
        print(json.dumps(row), flush=True)
    bare = bare_fwd_bwd(cfg)
    summary = {}
    for k in ("wall_s", "pretrain_s", "pairs_per_s", *KEYS):
        st = stats([r.get(k) for r in runs])
        if st["per_seed"]:  # a key that no run has gets no entry
            summary[k] = {"mean": st["mean"], "std": st["std"]}
    out = {
        "benchmark": "clip_small", "command": " ".join(sys.argv), "overrides": a.overrides, "runs": runs,
        "summary": summary, "bare_fwd_bwd_pairs_per_s": bare,
        "pipeline_to_bare_ratio": summary["pairs_per_s"]["mean"] / bare, "environment": environment(),
        "load_average_at_end": list(__import__("os").getloadavg()),
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2))
    print(json.dumps({k: f"{v['mean']:.4f} ± {v['std']:.4f}" for k, v in summary.items()}, indent=1))
    print(f"bare fwd+bwd {bare:.0f} pairs/s; pipeline/bare = {out['pipeline_to_bare_ratio']:.2f}; wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
