"""No-Label Backdoors selection at scale: wall time and peak memory of the ``con`` and ``kmeans`` rules at
N = 10k, 50k, 100k (random unit features; the budget is the paper's M = int(0.6 · N / 10)), against the dense
formulation of the official code (the N × N similarity matrix, then top-2M per row) where it fits in memory.

Each measurement runs in a fresh child process. Peak memory is the child's peak resident set above what it held
after making the features (Linux ``/proc/self/status`` VmHWM, reset through ``/proc/self/clear_refs``); on CUDA
(``--device cuda``) ``torch.cuda.max_memory_allocated`` above the features. Timings are wall seconds of the
selection alone. Run it on a quiet machine.

    python benchmarks/nlb_select_scale.py --out benchmarks/results/nlb_select_scale.json
    python benchmarks/nlb_select_scale.py --out /tmp/s.json --sizes 2000,5000 --dim 32   # smoke

JSON: ``{"N": {"con" | "kmeans" | "dense": {"seconds", "peak_mb"} | {"skipped": why}}, "_meta": {...}}``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

RULES = ("con", "kmeans", "dense")


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(rule: str, n: int, dim: int, device: str, threads: int) -> dict:
    """One measurement (runs in the child process)."""
    import torch

    import sklearn.cluster  # noqa: F401  (imported before the clock starts)

    from clpoison.attacks.nlb.poison_selection import nearest, nlb_budget, select

    torch.set_num_threads(threads)
    dev = torch.device(device)
    g = torch.Generator().manual_seed(0)
    f = torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=1).to(dev)
    m = nlb_budget(0.6, None, n, 10)
    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS to the current RSS
        base = _status_mb("VmRSS")
    t0 = time.perf_counter()
    if rule == "dense":  # the official formulation: the whole similarity matrix, then top-2M of every row
        top = (f @ f.t()).topk(2 * m, dim=1).values
        scores = top[:, :m].sum(1) - top[:, m:].sum(1)
        sel = nearest(f, int(scores.argmax()), m)
    else:
        sel = select(rule, f, m, seed=0, n_clusters=10).indices
    if cuda:
        torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else _status_mb("VmHWM") - base
    return {"seconds": round(secs, 3), "peak_mb": round(peak, 1), "M": m, "selected": int(len(sel))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--sizes", default="10000,50000,100000")
    ap.add_argument("--dim", type=int, default=128, help="feature dimension (128: the small encoder; 512: ResNet-18)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dense-max-gb", type=float, default=4.0, help="skip the dense formulation above this N x N size")
    ap.add_argument("--child", nargs=2, metavar=("RULE", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.dim, args.device, args.threads)))
        return
    result: dict = {}
    for n in (int(x) for x in args.sizes.split(",") if x):
        result[str(n)] = {}
        for rule in RULES:
            need_gb = n * n * 4 / 2**30
            if rule == "dense" and need_gb > args.dense_max_gb:
                result[str(n)][rule] = {"skipped": f"the N x N fp32 matrix alone needs {need_gb:.1f} GB"}
                continue
            r = subprocess.run([sys.executable, __file__, "--out", args.out, "--dim", str(args.dim), "--device",
                                args.device, "--threads", str(args.threads), "--child", rule, str(n)],
                               capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
            if r.returncode:
                result[str(n)][rule] = {"skipped": f"failed: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}"}
            else:
                result[str(n)][rule] = json.loads(r.stdout.strip().splitlines()[-1])
            print(n, rule, result[str(n)][rule], flush=True)
    import torch

    result["_meta"] = {"dim": args.dim, "device": args.device, "threads": args.threads, "torch": torch.__version__,
                       "budget": "M = int(0.6 * N / 10)", "chunk": "default (256 MB of similarities per chunk)"}
    from clpoison.utils.io import atomic_write_json

    atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
