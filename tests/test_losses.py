"""Each loss equals a naive loop-based reference; each method's loss decreases on a tiny batch."""

import math

import torch
import torch.nn.functional as F

from clpoison.methods import BYOL, MoCoV2, SimCLR
from clpoison.methods.byol import BYOLParams, byol_loss
from clpoison.methods.mocov2 import MoCoV2Params, moco_infonce_loss
from clpoison.methods.simclr import SimCLRParams, nt_xent_loss
from clpoison.models import build_backbone


def naive_nt_xent(z1, z2, t):
    z = [F.normalize(v, dim=0) for v in torch.cat([z1, z2]).double()]
    n2 = len(z)
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        j = (i + n) % n2
        num = math.exp(float(z[i] @ z[j]) / t)
        den = sum(math.exp(float(z[i] @ z[k]) / t) for k in range(n2) if k != i)
        total += -math.log(num / den)
    return total / n2


def naive_moco(q, k, queue, t):
    total = 0.0
    for i in range(len(q)):
        qi, ki = F.normalize(q[i].double(), dim=0), F.normalize(k[i].double(), dim=0)
        logits = [float(qi @ ki) / t] + [float(qi @ queue[:, j].double()) / t for j in range(queue.shape[1])]
        m = max(logits)
        total += -(logits[0] - m - math.log(sum(math.exp(l - m) for l in logits)))
    return total / len(q)


def naive_byol(p, z):
    total = 0.0
    for a, b in zip(p.double(), z.double()):
        total += 2 - 2 * float(a @ b) / (float(a.norm()) * float(b.norm()))
    return total / len(p)


def test_nt_xent_matches_naive():
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    for t in (0.1, 0.5):
        assert abs(float(nt_xent_loss(z1, z2, t)) - naive_nt_xent(z1, z2, t)) < 1e-5


def test_moco_matches_naive():
    g = torch.Generator().manual_seed(2)
    q, k = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    queue = F.normalize(torch.randn(8, 10, generator=g), dim=0)
    assert abs(float(moco_infonce_loss(q, k, queue, 0.2)) - naive_moco(q, k, queue, 0.2)) < 1e-5


def test_byol_matches_naive():
    g = torch.Generator().manual_seed(3)
    p, z = torch.randn(7, 6, generator=g), torch.randn(7, 6, generator=g)
    assert abs(float(byol_loss(p, z)) - naive_byol(p, z)) < 1e-5


def test_nt_xent_shape_mismatch_raises():
    try:
        nt_xent_loss(torch.randn(3, 4), torch.randn(4, 4))
    except ValueError as e:
        assert "same shape" in str(e)
    else:
        raise AssertionError("expected ValueError")


def _views(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 16, 16, generator=g)
    return x + 0.05 * torch.randn(n, 3, 16, 16, generator=g), x + 0.05 * torch.randn(n, 3, 16, 16, generator=g)


def _loss_decreases(method, steps=15, lr=0.05, check=True):
    torch.manual_seed(0)
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=lr, momentum=0.9)
    batch = {"views": _views()}
    losses = []
    for s in range(steps):
        loss, _ = method.training_step(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        method.after_optimizer_step((s + 1) / steps)
        losses.append(float(loss.detach()))
    if check:
        assert losses[-1] < losses[0], losses
    return losses


def test_simclr_loss_decreases():
    _loss_decreases(SimCLR(build_backbone("convnet", 8), SimCLRParams(temperature=0.5, proj_dim=16)))


def test_mocov2_loss_decreases_and_queue_updates():
    # the first step's negatives are the random initial queue (easy); compare once the queue holds real keys
    m = MoCoV2(build_backbone("convnet", 8), MoCoV2Params(queue_size=48, proj_hidden_dim=32, proj_dim=16, momentum=0.9, bn_splits=2))
    q0 = m.queue.clone()
    key0 = [p.clone() for p in m.key_backbone.parameters()]
    losses = _loss_decreases(m, steps=20, check=False)
    assert losses[-1] < losses[3], losses
    assert int(m.queue_ptr) == (20 * 16) % 48
    assert not torch.equal(q0, m.queue)
    assert any(not torch.equal(a, b) for a, b in zip(key0, m.key_backbone.parameters()))
    assert all(not p.requires_grad for p in m.key_backbone.parameters())


def test_byol_loss_decreases_and_momentum_schedule():
    m = BYOL(build_backbone("convnet", 8), BYOLParams(proj_hidden_dim=32, proj_dim=16, pred_hidden_dim=32, base_momentum=0.9))
    _loss_decreases(m)
    assert abs(float(m.momentum) - 1.0) < 1e-6  # τ reaches 1 at the end of training
    m.after_optimizer_step(0.0)
    assert abs(float(m.momentum) - 0.9) < 1e-6


def test_moco_grouped_key_forward_is_permutation_invariant_in_eval():
    from clpoison.methods.mocov2 import _grouped_forward

    net = build_backbone("convnet", 4).eval()
    x = torch.randn(8, 3, 16, 16)
    perm = torch.randperm(8)
    assert torch.allclose(_grouped_forward(net, x, 4, perm), net(x), atol=1e-5)
