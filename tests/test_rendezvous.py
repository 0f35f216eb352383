"""Distributed start-up fails fast (clpoison.utils.rendezvous): a process whose peers never come stops within the
rendezvous timeout with one line naming what is missing; bad launcher variables are one line; two processes that do
start meet and all-reduce."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import clpoison
from clpoison.errors import ConfigError
from clpoison.utils import dist
from clpoison.utils.rendezvous import RENDEZVOUS_ENV
from ddp_helpers import free_port


@pytest.mark.parametrize("rank, match", [(0, "waiting for 1 of 2 processes at 127.0.0.1:"),
                                         (1, "waiting for rank 0 of 2 processes at 127.0.0.1:")])
def test_missing_peer_is_one_line_within_the_timeout(monkeypatch, rank, match):
    monkeypatch.setenv(RENDEZVOUS_ENV, "1.5")
    env = {"WORLD_SIZE": "2", "RANK": str(rank), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match=match) as e:
        dist.init_distributed(torch.device("cpu"), env)
    assert time.monotonic() - t0 < 10 and "unset WORLD_SIZE/RANK" in str(e.value) and "\n" not in str(e.value)
    assert not dist.is_initialized()


@pytest.mark.parametrize("env, match", [
    ({"WORLD_SIZE": "2", "RANK": "0", "MASTER_PORT": "99999"}, "MASTER_PORT=99999"),
    ({"WORLD_SIZE": "2", "RANK": "0", "MASTER_PORT": "0"}, "MASTER_PORT=0"),
    ({"WORLD_SIZE": "0", "RANK": "0"}, "WORLD_SIZE=0"),
    ({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "-1"}, "LOCAL_RANK=-1"),
    ({"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "no-such-host.invalid"}, "MASTER_ADDR='no-such-host.invalid'"),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "-3"}, "SLURM_NTASKS=-3"),
])
def test_bad_variables_are_one_line(monkeypatch, env, match):
    monkeypatch.setenv(RENDEZVOUS_ENV, "1")
    with pytest.raises(ConfigError, match=match):
        dist.init_distributed(torch.device("cpu"), env)


def test_cli_without_peers_ends_in_one_line_and_writes_nothing(tmp_path):
    """The issue's case: ``WORLD_SIZE=2 RANK=0 clpoison run`` used to wait two hours; now one line, exit 2."""
    (tmp_path / "c.yaml").write_text("preset: simclr-small\n")
    src = str(Path(clpoison.__file__).parents[1])  # this checkout's package, also in the child process
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]), "WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
           RENDEZVOUS_ENV: "2", "OMP_NUM_THREADS": "1"}
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "clpoison", "run", "c.yaml", "--out", "o"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: waiting for 1 of 2"), r.stderr
    assert time.monotonic() - t0 < 60
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]


def _join(r, port, q):
    os.environ[RENDEZVOUS_ENV] = "30"
    torch.set_num_threads(1)
    dist.init_distributed(torch.device("cpu"), {"WORLD_SIZE": "2", "RANK": str(r), "MASTER_PORT": str(port)})
    x = torch.tensor([r + 1.0])
    torch.distributed.all_reduce(x)
    q.put((r, x.item()))
    dist.destroy()


def test_two_processes_meet_and_all_reduce():
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_join, args=(r, port, q)) for r in (1, 0)]  # rank 1 first: it waits for rank 0
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert sorted(q.get(timeout=5) for _ in procs) == [(0, 3.0), (1, 3.0)]
