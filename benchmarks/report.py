"""Render the benchmark JSON files as Markdown tables (pasted into docs/benchmarks.md).

Usage: ``python benchmarks/report.py --throughput F.json --ssl F.json``
"""

from __future__ import annotations

import argparse
import json

from clpoison.report.tables import ssl_table, throughput_table


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
