"""2 gloo processes, each given half of a fixed batch: the loss and the gradients of NT-Xent, CLIP's InfoNCE,
MoCo v2 (ShuffleBN across ranks, queue of gathered keys), CleanCLIP's CLIP + in-modal loss and RoCLIP's pool-matched
loss (and its caption pool after the push) equal one process on the whole batch. This is the
regression lightly#1980 hit (a raw all_reduce in the gather's backward scaled the gradients by 1/world size)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from clpoison.defenses.cleanclip import CleanCLIPMethod, CleanCLIPParams
from clpoison.defenses.roclip import RoCLIPMethod, TextPool
from clpoison.engine.distributed import wrap_for_training
from clpoison.methods import MoCoV2
from clpoison.methods.base import Method
from clpoison.methods.clip import clip_loss
from clpoison.methods.mocov2 import MoCoV2Params
from clpoison.methods.simclr import nt_xent_loss
from clpoison.models import build_backbone
from clpoison.utils.dist import all_reduce_mean, rank, world_size

from ddp_helpers import run_on_ranks

pytestmark = pytest.mark.ddp
N = 8  # global batch


class TinySimCLR(Method):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(6, 4)

    def loss(self, batch):
        return nt_xent_loss(self.proj(batch["x1"]), self.proj(batch["x2"]), 0.5), {}, {}


class TinyCLIP(Method):
    def __init__(self) -> None:
        super().__init__()
        self.img, self.txt = nn.Linear(6, 4), nn.Linear(5, 4)
        self.scale = nn.Parameter(torch.tensor(3.0))

    def loss(self, batch):
        i = nn.functional.normalize(self.img(batch["x1"]), dim=1)
        t = nn.functional.normalize(self.txt(batch["t"]), dim=1)
        return clip_loss(i, t, self.scale), {}, {}


class TinyTowers(nn.Module):
    """What the CLIP defenses call on ``method.model``: ``scale``, ``encode_image``, ``encode_text``, ``forward``."""

    def __init__(self) -> None:
        super().__init__()
        self.img, self.txt = nn.Linear(6, 4), nn.Linear(5, 4)
        self.log_scale = nn.Parameter(torch.tensor(1.0))

    def scale(self):
        return self.log_scale.exp()

    def encode_image(self, x):
        return nn.functional.normalize(self.img(x), dim=1)

    def encode_text(self, t):
        return nn.functional.normalize(self.txt(t), dim=1)

    def forward(self, x, t):
        return self.encode_image(x), self.encode_text(t), self.scale()


class TinyCLIPMethod(Method):
    def __init__(self) -> None:
        super().__init__()
        self.model = TinyTowers()


def _data():
    g = torch.Generator().manual_seed(0)
    return {"x1": torch.randn(N, 6, generator=g), "x2": torch.randn(N, 6, generator=g), "t": torch.randn(N, 5, generator=g),
            "img1": torch.randn(N, 3, 8, 8, generator=g), "img2": torch.randn(N, 3, 8, 8, generator=g),
            "x3": torch.randn(N, 6, generator=g), "t2": torch.randn(N, 5, generator=g)}


def _moco(bn_splits: int) -> MoCoV2:
    torch.manual_seed(0)
    return MoCoV2(build_backbone("convnet", 4), MoCoV2Params(queue_size=16, proj_hidden_dim=8, proj_dim=4, bn_splits=bn_splits))


def _step(method: Method, batch: dict) -> dict:
    """One loss + backward through the engine's wrapper (DDP when world > 1); loss averaged over ranks."""
    method, loss_fn = wrap_for_training(method, torch.device("cpu"))
    torch.manual_seed(1)  # MoCo's shuffle: rank 0 draws what the single process draws
    loss, _, aux = loss_fn(batch)
    loss.backward()
    method.update_state(aux)
    return {"loss": float(all_reduce_mean(loss.detach())),
            "grads": {k: p.grad.clone() for k, p in method.named_parameters() if p.grad is not None},
            "buffers": {k: b.clone() for k, b in method.named_buffers() if "queue" in k or "pool" in k}}


def _cases(r: int, world: int) -> dict:
    data = _data()
    n = N // world
    local = {k: v[r * n:(r + 1) * n] for k, v in data.items()}
    out = {}
    for name, make in (("simclr", TinySimCLR), ("clip", TinyCLIP)):
        torch.manual_seed(0)
        out[name] = _step(make(), local)
    # W processes with bn_splits b compute what one process with bn_splits W·b computes
    out["mocov2"] = _step(_moco(1 if world > 1 else 2), {"views": (local["img1"], local["img2"])})
    torch.manual_seed(0)
    out["cleanclip"] = _step(CleanCLIPMethod(TinyCLIPMethod(), CleanCLIPParams(checkpoint="-", inmodal_weight=0.7)),
                             {"images": local["x1"], "images_aug": local["x2"], "tokens": local["t"], "tokens_aug": local["t2"]})
    torch.manual_seed(0)  # RoCLIP's matching step: each rank queries the pool, then pushes the captions of all ranks
    roclip = RoCLIPMethod(TinyCLIPMethod(), TextPool(12, 4, seed=3))
    out["roclip"] = _step(roclip, {"images": local["x1"], "tokens": local["t"], "roclip_matching": True})
    for p in roclip.parameters():
        p.grad = None
    out["roclip_2"] = _step(roclip, {"images": local["x3"], "tokens": local["t2"], "roclip_matching": True})
    out["world"], out["rank"] = world_size(), rank()
    return out


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    single = _cases(0, 1)
    ranks = run_on_ranks(_cases, tmp_path_factory.mktemp("ddp"), world=2)
    return single, ranks


@pytest.mark.parametrize("name", ["simclr", "clip", "mocov2", "cleanclip", "roclip", "roclip_2"])
def test_loss_and_gradients_equal_single_process(results, name):
    single, ranks = results
    assert [r["world"] for r in ranks] == [2, 2] and [r["rank"] for r in ranks] == [0, 1]
    want = single[name]
    assert want["grads"], "no gradient reached the parameters"
    for got in (r[name] for r in ranks):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-5, abs=1e-6)
        assert got["grads"].keys() == want["grads"].keys()
        for k, g in want["grads"].items():
            torch.testing.assert_close(got["grads"][k], g, rtol=1e-4, atol=1e-6, msg=f"{name}: gradient of {k}")
        for k, b in want["buffers"].items():  # MoCo's queue / RoCLIP's pool took the keys of both ranks, in rank order
            torch.testing.assert_close(got["buffers"][k], b, rtol=1e-4, atol=1e-6, msg=f"{name}: {k}")


def test_half_batch_alone_differs(results):
    """The check can fail: one rank's half on its own is not the global-batch loss."""
    single, _ = results
    data = _data()
    torch.manual_seed(0)
    half = TinySimCLR()
    loss, _, _ = half.loss({k: v[: N // 2] for k, v in data.items()})
    assert abs(float(loss.detach()) - single["simclr"]["loss"]) > 1e-3


def test_roclip_matching_step_gives_the_text_tower_no_gradient_and_fills_the_pool(results):
    single, ranks = results
    want = single["roclip"]
    assert not any(k.startswith("clip.model.txt") for k in want["grads"]), "matching: captions come from the pool"
    pool = next(v for k, v in want["buffers"].items() if k.endswith("pool.bank"))
    assert not torch.equal(pool, TextPool(12, 4, seed=3).bank)  # the push happened (and both ranks did the same)
    for k in want["buffers"]:
        assert torch.equal(ranks[0]["roclip"]["buffers"][k], ranks[1]["roclip"]["buffers"][k]), k
