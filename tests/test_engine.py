"""Engine: exact resume, schedule, LARS, checkpoint contents."""

import torch

from clpoison.data.augment import AugmentConfig, TwoViewAugment
from clpoison.data.datasets import ImageDataset
from clpoison.data.loader import ResidentBatches, TwoViewBatches
from clpoison.engine import LARS, TrainConfig, Trainer, warmup_cosine
from clpoison.methods import BYOL, MoCoV2
from clpoison.methods.byol import BYOLParams
from clpoison.methods.mocov2 import MoCoV2Params
from clpoison.models import build_backbone
from clpoison.utils.seed import seed_everything


def _dataset(n=48):
    g = torch.Generator().manual_seed(0)
    return ImageDataset(torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=g), torch.zeros(n), ["a"])


def _train(out, epochs, total_epochs, kind):
    seed_everything(0)
    bb = build_backbone("convnet", 4)
    if kind == "moco":
        method = MoCoV2(bb, MoCoV2Params(queue_size=32, proj_hidden_dim=16, proj_dim=8, momentum=0.9, bn_splits=2))
    else:
        method = BYOL(bb, BYOLParams(proj_hidden_dim=16, proj_dim=8, pred_hidden_dim=16))
    cfg = TrainConfig(epochs=total_epochs, batch_size=16, lr=0.1, warmup_epochs=1, progress=False)
    batches = TwoViewBatches(ResidentBatches(_dataset(), 16, torch.device("cpu"), seed=0), TwoViewAugment(AugmentConfig(out_size=16)))
    tr = Trainer(method, batches, cfg, torch.device("cpu"), out)
    if epochs < total_epochs:  # stop early, as if interrupted after `epochs` epochs
        tr.cfg = TrainConfig(**{**cfg.__dict__, "epochs": epochs})
        tr.fit()
        return None
    tr.fit()
    return tr


def test_resume_is_exact(tmp_path):
    for kind in ("moco", "byol"):
        straight = _train(tmp_path / f"{kind}-a", 4, 4, kind)
        _train(tmp_path / f"{kind}-b", 2, 4, kind)  # two epochs, then "crash"
        resumed = _train(tmp_path / f"{kind}-b", 4, 4, kind)  # same command again: resumes at epoch 2
        assert resumed.epoch == 4 and resumed.step == straight.step
        sa, sb = straight.method.state_dict(), resumed.method.state_dict()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), f"{kind}: {k} differs after resume"
        ckpt = torch.load(tmp_path / f"{kind}-b" / "checkpoint.pt", weights_only=True)  # plain tensors and types only
        assert {"model", "optimizer", "scheduler", "rng", "epoch", "step"} <= set(ckpt)
        assert (tmp_path / f"{kind}-b" / "metrics.jsonl").read_text().count('"event": "epoch"') == 4


def test_warmup_cosine():
    assert warmup_cosine(0, 100, 10) == 0.1
    assert warmup_cosine(9, 100, 10) == 1.0
    assert abs(warmup_cosine(55, 100, 10) - 0.5) < 1e-9
    assert warmup_cosine(100, 100, 10) == 0.0


def test_lars_trust_ratio():
    w = torch.nn.Parameter(torch.ones(4) * 2)  # ‖w‖ = 4
    w.grad = torch.ones(4)  # ‖g‖ = 2
    opt = LARS([{"params": [w]}], lr=1.0, momentum=0.0, eta=0.5)
    opt.step()
    # step = lr · eta·‖w‖/‖g‖ · g = 1 · 0.5·4/2 · 1 = 1
    assert torch.allclose(w.detach(), torch.ones(4))
    b = torch.nn.Parameter(torch.ones(2))
    b.grad = torch.ones(2)
    LARS([{"params": [b], "lars_exclude": True}], lr=0.1, momentum=0.0).step()
    assert torch.allclose(b.detach(), torch.full((2,), 0.9))


def test_channels_last_off_for_narrow_models_on_cpu():
    """torch 2.13 CPU (oneDNN) corrupts the heap in channels_last backward of ResNets narrower than 16 channels."""
    from clpoison.engine.trainer import min_conv_channels

    cfg = TrainConfig(epochs=1)
    cpu = torch.device("cpu")
    assert min_conv_channels(build_backbone("resnet10", 8, 2)) == 8
    assert not cfg.use_channels_last(cpu, 8) and cfg.use_channels_last(cpu, 16) and cfg.use_channels_last(cpu, None)
    assert not TrainConfig(epochs=1, channels_last="off").use_channels_last(cpu, 64)
    # the narrow ResNet that aborted with channels_last trains contiguous through the engine
    seed_everything(0)
    method = BYOL(build_backbone("resnet10", 8, 2), BYOLParams(proj_hidden_dim=16, proj_dim=8, pred_hidden_dim=16))
    batches = TwoViewBatches(ResidentBatches(_dataset(37), 37, cpu, seed=0), TwoViewAugment(AugmentConfig(out_size=16)))
    tr = Trainer(method, batches, cfg, cpu, None)
    assert not method.backbone.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    tr.cfg.progress = False
    tr.fit()
    assert tr.step == 1
