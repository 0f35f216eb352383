"""Distributed start-up that fails fast: the processes of a run meet within a short rendezvous timeout, apart from
the (long) timeout of the collectives that follow.

Without a launcher's own store (``torchrun`` hosts one; manual ``WORLD_SIZE`` / ``RANK``, ``srun`` and the tests
do not), :func:`rendezvous_store` opens the run's ``TCPStore`` itself: rank 0 listens at ``MASTER_ADDR:MASTER_PORT``,
the others connect, and every process counts itself in. A process that does not see all ``WORLD_SIZE`` processes
within :data:`RENDEZVOUS_ENV` seconds (default 30) stops with one :class:`~clpoison.errors.ConfigError` line naming
what is missing — ``waiting for 1 of 2 processes at 127.0.0.1:29500; start all ranks with torchrun or unset
WORLD_SIZE/RANK`` — instead of waiting for the process group's two-hour timeout. An address that does not resolve,
a port already taken and a port outside 1..65535 are one line too. Reaching rank 0 is probed with a plain socket, so
c10d's own connection retries (and their log noise) never start before rank 0 is there.
"""

from __future__ import annotations

import datetime
import math
import os
import socket
import time
from typing import Any

import torch.distributed as dist

from ..errors import ConfigError

RENDEZVOUS_ENV = "CLPOISON_RENDEZVOUS_TIMEOUT_S"  # seconds the processes of a run wait for each other at start-up
DEFAULT_RENDEZVOUS_S = 30.0
_JOINED = "clpoison/rendezvous/joined"


def rendezvous_seconds() -> float:
    raw = os.environ.get(RENDEZVOUS_ENV, str(DEFAULT_RENDEZVOUS_S))
    try:
        s = float(raw)
    except ValueError:
        s = math.nan
    if not math.isfinite(s) or s <= 0:
        raise ConfigError(f"environment variable {RENDEZVOUS_ENV}='{raw}' must be a positive number of seconds")
    return s


def _fix() -> str:
    return "start all ranks with torchrun (or srun) or unset WORLD_SIZE/RANK (and SLURM_PROCID/SLURM_NTASKS)"


def rendezvous_store(env: Any, collective_timeout: datetime.timedelta) -> dist.TCPStore:
    """A ``TCPStore`` every one of ``env.world_size`` processes has joined (``env``: a :class:`~clpoison.utils.dist.
    DistEnv`), its timeout then set to ``collective_timeout``; one ConfigError line if they do not meet in time."""
    seconds = rendezvous_seconds()
    host, port, world = env.master_addr, env.master_port, env.world_size
    where = f"{host}:{port}"
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as e:
        raise ConfigError(f"MASTER_ADDR='{host}' does not resolve ({e}); set it to rank 0's host name or address, or "
                          f"{_fix()}") from None
    deadline = time.monotonic() + seconds
    if env.rank == 0:
        _check_port_free(host, port)
    else:
        _wait_for_listener(host, port, deadline, env.rank, world, seconds)
    try:
        store = dist.TCPStore(host, port, world, env.rank == 0,
                              datetime.timedelta(seconds=max(1.0, deadline - time.monotonic())),
                              wait_for_workers=False)
        store.add(_JOINED, 1)
        while (joined := store.add(_JOINED, 0)) < world:
            if time.monotonic() > deadline:
                del store  # rank 0's listener closes now, not when the traceback is collected
                raise ConfigError(f"waiting for {world - joined} of {world} processes at {where}; {_fix()} "
                                  f"(waited {seconds:g} s; {RENDEZVOUS_ENV} sets the wait)")
            time.sleep(0.05)
    except dist.DistError as e:
        raise ConfigError(f"rank {env.rank} lost the rendezvous at {where} ({str(e).splitlines()[0][:120]}); "
                          f"{_fix()}") from None
    store.set_timeout(collective_timeout)
    return store


def _check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("", port))
        except OSError as e:
            raise ConfigError(f"rank 0 cannot listen at {host}:{port} ({e.strerror}); choose a free MASTER_PORT") from None


def _wait_for_listener(host: str, port: int, deadline: float, rank: int, world: int, seconds: float) -> None:
    while True:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise ConfigError(f"waiting for rank 0 of {world} processes at {host}:{port} (this is rank {rank}); "
                                  f"{_fix()} (waited {seconds:g} s; {RENDEZVOUS_ENV} sets the wait)") from None
            time.sleep(0.1)
