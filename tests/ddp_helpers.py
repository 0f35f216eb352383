"""Running a function on 2 gloo processes in a test (the pattern of lightly's ``tests/ddp_helpers.py``)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(r: int, world: int, port: int, fn: Callable, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update({"OMP_NUM_THREADS": "1"})
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=r, world_size=world)
    try:
        torch.save(fn(r, world), Path(out) / f"rank{r}.pt")
    finally:
        dist.destroy_process_group()


def run_on_ranks(fn: Callable, tmp: Path, world: int = 2) -> list:
    """``fn(rank, world)`` on ``world`` spawned gloo processes; their return values (torch-saveable), rank order."""
    mp.spawn(_entry, args=(world, free_port(), fn, str(tmp)), nprocs=world, join=True)
    return [torch.load(Path(tmp) / f"rank{r}.pt", weights_only=False) for r in range(world)]
