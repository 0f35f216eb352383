"""DECREE trigger inversion (``clpoison inspect``) on backdoored and clean encoders: PL1-norm, verdict, suspected
target and time per encoder, and the ROC-AUC of the PL1-norm (a low PL1-norm flags a backdoor).

For every seed it trains (or reuses, under ``--work``):

* CLIP (``kind: clip``): the Carlini & Terzis backdoor at 1 % and 2 % (``carlini-backdoor-small`` with
  ``attack.params.poison_rate``) and the clean control (``clip-small``, the config of
  :func:`clpoison.experiments.bench.carlini_clean_control`); the image tower is inspected, and the inverted
  trigger pasted on the labelled test images names the zero-shot class it drives (the suspected target);
* image SSL (``kind: ssl``): SSL-Backdoor and its clean twin at the dose of ``docs/corruptencoder.md``
  (SimCLR, ResNet-10 width 16, τ 0.2, 9 % budget, 12-px patch, ``--ssl-epochs`` epochs; ``--ssl-seeds`` seeds).

Each inversion uses ``--shadow`` images of the bundled test split as the shadow set (no labels).

    python benchmarks/decree_small.py --out benchmarks/results/decree_small.json --seeds 2 --work runs/decree_small
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from clpoison.experiments.bench import (CORRUPTENCODER_PRESET, carlini_clean_control, corruptencoder_row_config,
                                        run_named, script_main, split_overrides, start)
from clpoison.experiments.config import load_preset

RATES = (0.01, 0.02)
SSL_OVERRIDES = ["model.arch=resnet10", "method.params.temperature=0.2", "attack.params.poison_rate=0.09"]


def cells(seeds: int, ssl_seeds: int, ssl_epochs: int) -> list[dict[str, Any]]:
    """Every encoder of the benchmark: ``name``, ``kind``, ``backdoored``, ``seed``, ``data`` (config mapping),
    ``overrides`` and ``true_target``."""
    out: list[dict[str, Any]] = []
    target = load_preset("carlini-backdoor-small")["attack"]["params"]["target"]
    for s in range(seeds):
        out.append({"name": f"clip_clean_s{s}", "kind": "clip", "backdoored": False, "seed": s,
                    "data": carlini_clean_control(), "overrides": [f"seed={s}"], "true_target": None})
        for r in RATES:
            out.append({"name": f"clip_backdoor_{r}_s{s}", "kind": "clip", "backdoored": True, "seed": s,
                        "data": {"preset": "carlini-backdoor-small"},
                        "overrides": [f"seed={s}", f"attack.params.poison_rate={r}"], "true_target": target})
    base = dict(load_preset(CORRUPTENCODER_PRESET)["attack"]["params"])
    ce, rest = split_overrides(SSL_OVERRIDES, base)
    for s in range(ssl_seeds):
        for row, bd in (("clean", False), ("ssl_backdoor", True)):
            out.append({"name": f"ssl_{row}_s{s}", "kind": "ssl", "backdoored": bd, "seed": s,
                        "data": corruptencoder_row_config(row, ce),
                        "overrides": [f"seed={s}", f"train.epochs={ssl_epochs}", *rest],
                        "true_target": ce["target"] if bd else None})
    return out


def train(cell: dict[str, Any], work: Path) -> Path:
    """The cell's finished run folder (trained now or reused)."""
    run_named(cell["name"], cell["data"], cell["overrides"], work)
    return Path(work) / cell["name"]
