"""CLIP small-preset benchmark: zero-shot top-1 and retrieval recalls over seeds, wall time, pairs/s, and the ratio of
the pipeline's training throughput to the bare forward+backward of both towers (same batch, random inputs, no data
path, no optimiser).

    python benchmarks/clip_small.py --out benchmarks/results/clip_small.json --seeds 3 [key=value overrides]

The runs are the grid ``benchmarks/grids/clip_small.yaml`` (clip-small, one cell per seed; ``clpoison grid FILE
--out WORK`` makes the same runs), kept in ``WORK/cells/NAME`` (default ``--work``: OUT without suffix + ``_runs``)
and reused when finished; a run's ``wall_s`` is its ``timings.total_s``. The bare forward+backward is timed afresh
by every call (also with ``--summarise-only``, which trains nothing: ten steps on random inputs are no training).

Writes ``{"runs": [...], "summary": {metric: {"mean", "std"}}, "bare_fwd_bwd_pairs_per_s", ...}``.
"""

from __future__ import annotations

import json
import os
import sys
import time

import torch

from clpoison.experiments.grid import expand_grid, read_grid
from clpoison.experiments.runner import environment
from clpoison.methods.clip import CLIP, CLIPParams, clip_loss
from clpoison.models import build_backbone

from _harness import GRIDS, comparison_parser, run_comparison, script_main, seed_axis, start, stats, write_result

GRID = GRIDS / "clip_small.yaml"
KEYS = ("zeroshot_top1", "zeroshot_top1_random_init", "recall_at_1_i2t", "recall_at_5_i2t", "recall_at_10_i2t",
        "recall_at_1_t2i", "recall_at_5_t2i", "recall_at_10_t2i", "linear_top1", "knn_top1")


def grid_spec(seeds: int) -> dict:
    """``benchmarks/grids/clip_small.yaml`` over ``seeds``."""
    return seed_axis(read_grid(GRID), seeds)


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


def summarise(runs: dict[str, dict]) -> tuple[list[dict], dict]:
    """``(one row per run, {metric: {"mean", "std"}})`` from ``{cell name: results.json}`` in seed order."""
    rows = []
    for res in runs.values():
        rows.append({"seed": res["config"]["seed"], "wall_s": res["timings"]["total_s"],
                     "pretrain_s": res["timings"]["pretrain_s"], "pairs_per_s": res["throughput"]["pretrain_pairs_per_s"],
                     **{k: res["metrics"].get(k) for k in KEYS}})
    summary = {}
    for k in ("wall_s", "pretrain_s", "pairs_per_s", *KEYS):
        st = stats([r.get(k) for r in rows])
        if st["per_seed"]:  # a key that no run has gets no entry
            summary[k] = {"mean": st["mean"], "std": st["std"]}
    return rows, summary


def main() -> None:
    ap = comparison_parser(__doc__, seeds=3)
    a = ap.parse_args()
    out, work = start(a)
    spec = grid_spec(a.seeds)
    runs, summary = summarise(run_comparison(spec, work, a.overrides, a.summarise_only))
    for row in runs:
        print(json.dumps(row), flush=True)
    bare = bare_fwd_bwd(expand_grid(spec, a.overrides)[-1].config)
    result = {
        "benchmark": "clip_small", "command": " ".join(sys.argv), "overrides": a.overrides, "runs": runs,
        "summary": summary, "bare_fwd_bwd_pairs_per_s": bare,
        "pipeline_to_bare_ratio": summary["pairs_per_s"]["mean"] / bare, "environment": environment(),
        "load_average_at_end": list(os.getloadavg()),
    }
    write_result(out, result, {k: f"{v['mean']:.4f} ± {v['std']:.4f}" for k, v in summary.items()})
    print(f"bare fwd+bwd {bare:.0f} pairs/s; pipeline/bare = {result['pipeline_to_bare_ratio']:.2f}; wrote {out}")


if __name__ == "__main__":
    script_main(main)
