"""Reading torchrun's and SLURM's variables (clpoison.utils.dist), one process: the helpers are the identity."""

import pytest
import torch

from clpoison.errors import ConfigError
from clpoison.utils import dist


def test_torchrun_variables_win_over_slurm():
    env = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "node0", "MASTER_PORT": "1234",
           "SLURM_PROCID": "0", "SLURM_NTASKS": "2"}
    e = dist.env_from_environ(env)
    assert (e.rank, e.world_size, e.local_rank, e.master_addr, e.master_port, e.launcher) == (3, 8, 1, "node0", 1234, "torchrun")


def test_slurm_variables():
    e = dist.env_from_environ({"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "MASTER_ADDR": "n1",
                               "SLURM_NNODES": "2"})
    assert (e.rank, e.world_size, e.local_rank, e.master_port, e.launcher) == (5, 8, 1, dist.DEFAULT_PORT, "slurm")
    single = dist.env_from_environ({"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_NNODES": "1"})
    assert single.master_addr == "127.0.0.1"


@pytest.mark.parametrize("env, match", [
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_NNODES": "2"}, "MASTER_ADDR is not set"),
    ({"RANK": "4", "WORLD_SIZE": "4"}, "outside a world of 4"),
    ({"RANK": "x", "WORLD_SIZE": "4"}, "RANK='x' is not an integer"),
])
def test_bad_launcher_settings_are_one_line(env, match):
    with pytest.raises(ConfigError, match=match):
        dist.env_from_environ(env)


def test_alone_everything_is_the_identity():
    assert dist.env_from_environ({}) is None and dist.env_from_environ({"RANK": "0", "WORLD_SIZE": "1"}) is None
    assert dist.init_distributed(torch.device("cpu"), {}) == torch.device("cpu") and not dist.is_initialized()
    x = torch.randn(3, 2, requires_grad=True)
    assert dist.all_gather_with_grad(x) is x and dist.all_gather_nograd(x) is x
    assert dist.broadcast_object({"a": 1}) == {"a": 1} and dist.all_gather_object(7) == [7]
    assert dist.local_batch_size(64) == 64 and dist.rank_seed(5, 0) == 5 and dist.rank_seed(5, 1) != 5
