"""Running on several processes: torchrun / SLURM start-up, the rank helpers, a gather that keeps the gradient.

clpoison follows PyTorch's own multi-GPU recipe (what open_clip, solo-learn and lightly use): one process per
device, started by ``torchrun`` (or ``srun`` under SLURM), joined in a ``torch.distributed`` process group, the model
wrapped in :class:`~torch.nn.parallel.DistributedDataParallel` by the engine. With one process nothing here
initialises anything and every helper is the identity, so a single-process run is exactly what it was.

* :func:`env_from_environ` reads the launcher's variables: torchrun's ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``
  (preferred), else SLURM's ``SLURM_PROCID`` / ``SLURM_NTASKS`` / ``SLURM_LOCALID``; ``MASTER_ADDR`` /
  ``MASTER_PORT`` name the rendezvous (``MASTER_PORT`` defaults to 29500; ``MASTER_ADDR`` must be set under SLURM
  with more than one node, e.g. ``export MASTER_ADDR=$(scontrol show hostnames $SLURM_JOB_NODELIST | head -n1)``).
* :func:`init_distributed` joins the group: ``nccl`` when the device is CUDA (one GPU per process, ``cuda:LOCAL_RANK``),
  ``gloo`` otherwise (CPU; what the tests use).
* :func:`all_gather_with_grad` concatenates a tensor from every rank and keeps the autograd graph: the backward
  sums the incoming gradients over ranks and returns this rank's slice (lightly's ``GatherLayer``). It is **not**
  scaled by 1/world size — with DDP averaging the parameter gradients, a contrastive loss computed from gathered
  features then has exactly the gradient of the single-process loss on the global batch (lightly#1980 is what the
  1/world-size version of this got wrong).

Example (one process: every helper is the identity)::

    >>> import torch
    >>> rank(), world_size(), is_main()
    (0, 1, True)
    >>> x = torch.randn(4, 3)
    >>> bool((all_gather_with_grad(x) == x).all())
    True
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Optional

import torch
import torch.distributed as dist

from ..errors import ConfigError
from .rendezvous import rendezvous_store

DEFAULT_PORT = 29500
TIMEOUT_ENV = "CLPOISON_DIST_TIMEOUT_MIN"  # minutes a rank waits for the others (rank 0's final evaluation)


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    launcher: str  # torchrun | slurm


def _int(environ: Mapping[str, str], key: str) -> int:
    try:
        return int(environ[key])
    except ValueError:
        raise ConfigError(f"environment variable {key}='{environ[key]}' is not an integer; fix the launcher's settings") from None


def env_from_environ(environ: Optional[Mapping[str, str]] = None) -> Optional[DistEnv]:
    """The launcher's view of this process, or ``None`` when it runs alone (no launcher, or a world of one)."""
    environ = os.environ if environ is None else environ
    if "WORLD_SIZE" in environ and "RANK" in environ:
        launcher, rank, world = "torchrun", _int(environ, "RANK"), _int(environ, "WORLD_SIZE")
        local = _int(environ, "LOCAL_RANK") if "LOCAL_RANK" in environ else rank
    elif "SLURM_PROCID" in environ and "SLURM_NTASKS" in environ:
        launcher, rank, world = "slurm", _int(environ, "SLURM_PROCID"), _int(environ, "SLURM_NTASKS")
        local = _int(environ, "SLURM_LOCALID") if "SLURM_LOCALID" in environ else rank
    else:
        return None
    if world < 1 or local < 0:
        key = "WORLD_SIZE" if world < 1 else "LOCAL_RANK"
        raise ConfigError(f"{key if launcher == 'torchrun' else 'SLURM_' + key.replace('WORLD_SIZE', 'NTASKS')}="
                          f"{world if world < 1 else local} is out of range; fix the launcher's settings")
    if world == 1:
        return None
    if not 0 <= rank < world:
        raise ConfigError(f"rank {rank} is outside a world of {world} processes; fix the launcher's RANK / WORLD_SIZE")
    addr = environ.get("MASTER_ADDR")
    if addr is None:
        nodes = environ.get("SLURM_NNODES", environ.get("SLURM_JOB_NUM_NODES", "1"))
        if launcher == "slurm" and nodes != "1":
            raise ConfigError("MASTER_ADDR is not set for a multi-node SLURM job; export MASTER_ADDR=$(scontrol show "
                              "hostnames $SLURM_JOB_NODELIST | head -n1) before srun")
        addr = "127.0.0.1"
    port = _int(environ, "MASTER_PORT") if "MASTER_PORT" in environ else DEFAULT_PORT
    if not 1 <= port <= 65535:
        raise ConfigError(f"environment variable MASTER_PORT={port} is not a port (1..65535); choose a free port")
    return DistEnv(rank, world, local, addr, port, launcher)


_alone = 0  # > 0 inside alone(): this process computes by itself (rank 0's attack, its evaluation)


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() and not _alone else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() and not _alone else 1


@contextlib.contextmanager
def alone() -> Iterator[None]:
    """Within it this process acts as a world of one: losses gather nothing, the engine wraps no DDP — for the work
    rank 0 does by itself (the attack's poisoning, which may train a surrogate; evaluation)."""
    global _alone
    _alone += 1
    try:
        yield
    finally:
        _alone -= 1


def is_main() -> bool:
    return rank() == 0


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def init_distributed(device: torch.device, environ: Optional[Mapping[str, str]] = None) -> torch.device:
    """Join the process group the launcher describes (no-op alone or when already joined); returns this process's
    device (``cuda:LOCAL_RANK`` on CUDA)."""
    env = env_from_environ(environ)
    if env is None and not is_initialized():
        return device
    if device.type == "cuda" and env is not None:
        if env.local_rank >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {env.local_rank} but only {torch.cuda.device_count()} GPUs are visible; "
                              "start at most one process per GPU (torchrun --nproc_per_node)")
        device = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(device)
    if is_initialized():
        return device
    timeout = datetime.timedelta(minutes=float(os.environ.get(TIMEOUT_ENV, "120")))
    if environ is None and "TORCHELASTIC_RUN_ID" in os.environ:  # torchrun started every rank and hosts the store
        dist.init_process_group(backend_for(device), init_method="env://", rank=env.rank, world_size=env.world_size,
                                timeout=timeout)
        return device
    store = rendezvous_store(env, timeout)  # manual variables, srun: meet within a minute or one line says who is missing
    dist.init_process_group(backend_for(device), store=store, rank=env.rank, world_size=env.world_size,
                            timeout=timeout)
    if environ is None:  # what the processes we start (loader workers) and libraries read; SLURM's values too —
        # written once the group exists, so a failed start leaves the environment as it was
        for key, value in (("MASTER_ADDR", env.master_addr), ("MASTER_PORT", env.master_port), ("RANK", env.rank),
                           ("WORLD_SIZE", env.world_size), ("LOCAL_RANK", env.local_rank)):
            os.environ.setdefault(key, str(value))
    return device


def destroy() -> None:
    if is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


class _GatherWithGrad(torch.autograd.Function):
    """Forward: all_gather; backward: all_reduce (sum) of the gathered gradient, this rank's slice."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = x.contiguous()  # one layout for the sent and the received bytes (not channels_last)
        out = [torch.empty_like(x, memory_format=torch.contiguous_format) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x)
        return tuple(out)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> torch.Tensor:
        g = torch.stack([t.contiguous() for t in grads])
        dist.all_reduce(g, op=dist.ReduceOp.SUM)
        return g[dist.get_rank()]


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """``x`` of every rank concatenated along dim 0 (rank order), differentiable; ``x`` itself when alone.
    Every rank must pass the same shape."""
    if world_size() == 1:
        return x
    return torch.cat(_GatherWithGrad.apply(x), 0)


@torch.no_grad()
def all_gather_nograd(x: torch.Tensor) -> torch.Tensor:
    """``x`` of every rank concatenated along dim 0, without gradient (MoCo's keys and ShuffleBN inputs)."""
    if world_size() == 1:
        return x
    x = x.contiguous()
    out = [torch.empty_like(x, memory_format=torch.contiguous_format) for _ in range(world_size())]
    dist.all_gather(out, x)
    return torch.cat(out, 0)


def broadcast_tensor(x: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Rank ``src``'s ``x`` on every rank (in place; same shape and dtype on every rank)."""
    if world_size() > 1:
        dist.broadcast(x, src)
    return x


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s picklable ``obj`` on every rank (between the run's own processes only)."""
    if world_size() == 1:
        return obj
    box = [obj if rank() == src else None]
    dist.broadcast_object_list(box, src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over ranks (a new tensor; ``x`` when alone)."""
    if world_size() == 1:
        return x
    y = x.detach().clone().float()
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y / world_size()


@torch.no_grad()
def sync_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm running statistics, queues) to every rank."""
    if world_size() == 1:
        return
    for b in module.buffers():
        dist.broadcast(b.data, src)


def rank_seed(seed: int, r: int) -> int:
    """The seed of rank ``r``'s augmentation stream (rank 0 keeps ``seed``)."""
    return int(seed) + 1_000_003 * int(r)


def local_batch_size(batch_size: int) -> int:
    """This process's share of the global ``train.batch_size`` (the whole of it when alone)."""
    w = world_size()
    if batch_size % w:
        raise ConfigError(f"train.batch_size={batch_size} is not divisible by the {w} processes; use a multiple of {w}")
    return batch_size // w
