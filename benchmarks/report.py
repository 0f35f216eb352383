"""Render the benchmark JSON files as Markdown tables (pasted into docs/benchmarks.md).

Usage: ``python benchmarks/report.py --throughput F.json --ssl F.json``
"""

from __future__ import annotations

import argparse
import json


def pm(d: dict, scale: float = 1.0, digits: int = 3) -> str:
    return f"{d['mean'] * scale:.{digits}f} ± {d['std'] * scale:.{digits}f}"


def throughput_table(res: dict) -> str:
    rows = ["| method | end-to-end images/s | bare backbone fwd+bwd images/s | ratio | per-image DataLoader baseline images/s | speed-up |",
            "| --- | --- | --- | --- | --- | --- |"]
    for m in ("simclr", "mocov2", "byol"):
        if m in res:
            r = res[m]
            rows.append(f"| {m} | {r['images_per_s']:.0f} | {r['bare_images_per_s']:.0f} | {r['ratio']:.2f} | "
                        f"{r['baseline_images_per_s']:.0f} | {r['speedup_over_baseline']:.1f}× |")
    env = res.get("environment", {})
    rows.append(f"\nDevice: {env.get('device')}, {env.get('threads')} threads, torch {env.get('torch')}, median of {env.get('rounds')} alternating rounds of {env.get('steps_per_round')} steps.")
    return "\n".join(rows)


def ssl_table(res: dict) -> str:
    rows = ["| preset | kNN top-1 | linear top-1 | kNN top-1 at random init | wall time (s) |", "| --- | --- | --- | --- | --- |"]
    for m in ("simclr", "mocov2", "byol"):
        if m in res:
            r = res[m]
            rows.append(f"| {r['preset']} | {pm(r['knn_top1'])} | {pm(r['linear_top1'])} | {pm(r['knn_top1_random_init'])} | "
                        f"{pm(r['wall_s'], digits=0)} |")
    rows.append(f"\n{res['seeds']} seeds (0..{res['seeds'] - 1}), mean ± std.")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--throughput")
    ap.add_argument("--ssl")
    args = ap.parse_args()
    if args.throughput:
        print(throughput_table(json.load(open(args.throughput))), "\n")
    if args.ssl:
        print(ssl_table(json.load(open(args.ssl))))


if __name__ == "__main__":
    main()
