"""The method contract: ``loss`` is pure (no queue, pointer, EMA target or memory bank changes), ``update_state``
applies what it returns after the optimiser step, and a method rebuilt from its checkpoint is the same method."""

from __future__ import annotations

import pytest
import torch

from clpoison.data.captions.caption_loader import flat_captions
from clpoison.defenses.safeclip.safeclip_objective import SafeCLIPMethod
from clpoison.defenses.safeclip.safeclip_params import SafeCLIPParams
from clpoison.methods.build import build_method, method_from_checkpoint
from clpoison.errors import ConfigError

MODEL = {"arch": "convnet", "width": 8}
SMALL = {"simclr": {"proj_dim": 8}, "mocov2": {"proj_dim": 8, "proj_hidden_dim": 16, "queue_size": 32, "bn_splits": 2},
         "byol": {"proj_dim": 8, "proj_hidden_dim": 16, "pred_hidden_dim": 16}}


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer, persistent or not, cloned."""
    out = {f"p:{k}": v.detach().clone() for k, v in module.named_parameters()}
    out.update({f"b:{k}": v.detach().clone() for k, v in module.named_buffers()})
    return out


def changed(before: dict, module: torch.nn.Module) -> list[str]:
    after = snapshot(module)
    return [k for k in before if not torch.equal(before[k], after[k])]


def views(n: int = 8) -> dict:
    g = torch.Generator().manual_seed(0)
    return {"views": (torch.randn(n, 3, 16, 16, generator=g), torch.randn(n, 3, 16, 16, generator=g))}


@pytest.mark.parametrize("name", ["simclr", "mocov2", "byol"])
def test_loss_is_pure_in_eval_mode(name):
    """In eval mode a loss() call — forward and backward — leaves every parameter and buffer bit-identical."""
    torch.manual_seed(0)
    m = build_method(name, SMALL[name], MODEL).eval()
    before = snapshot(m)
    loss, logs, aux = m.loss(views())
    loss.backward()
    assert torch.isfinite(loss) and changed(before, m) == []


@pytest.mark.parametrize("name", ["mocov2", "byol"])
def test_loss_leaves_queue_pointer_and_target_alone_in_train_mode(name):
    """In train mode only BatchNorm running statistics may move (as in any train-mode forward)."""
    torch.manual_seed(0)
    m = build_method(name, SMALL[name], MODEL).train()
    before = snapshot(m)
    m.loss(views())
    moved = changed(before, m)
    assert moved and all(k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in moved), moved


def test_moco_update_state_enqueues_the_batch_keys():
    torch.manual_seed(0)
    m = build_method("mocov2", SMALL["mocov2"], MODEL)
    queue, ptr = m.queue.clone(), int(m.queue_ptr)
    _, _, aux = m.loss(views(8))
    assert torch.equal(m.queue, queue)
    m.update_state(aux)
    k = torch.nn.functional.normalize(aux["keys"][0].float(), dim=1)
    assert int(m.queue_ptr) == (ptr + 8) % 32
    assert torch.allclose(m.queue[:, ptr:ptr + 8], k.t()) and torch.equal(m.queue[:, ptr + 8:], queue[:, ptr + 8:])


def test_training_step_equals_loss_then_update_state():
    """The old single call and the split contract give the same loss and the same queue."""
    torch.manual_seed(0)
    a = build_method("mocov2", SMALL["mocov2"], MODEL)
    b = build_method("mocov2", SMALL["mocov2"], MODEL)
    b.load_state_dict(a.state_dict())
    batch = views()
    torch.manual_seed(1)
    la, _ = a.training_step(batch)
    torch.manual_seed(1)
    lb, _, aux = b.loss(batch)
    b.update_state(aux)
    assert torch.equal(la, lb) and torch.equal(a.queue, b.queue) and torch.equal(a.queue_ptr, b.queue_ptr)


def test_safeclip_memory_bank_is_pushed_only_by_update_state():
    from test_safeclip import tiny_setup

    ds, clip, cb = tiny_setup()
    m = SafeCLIPMethod(clip, SafeCLIPParams(memory_bank=True, memory_bank_size=64, image_aug="clip"))
    tok = cb.tokens[:16]
    batch = {"phase": "inmodal", "images": torch.randn(16, 3, 16, 16), "images2": torch.randn(16, 3, 16, 16),
             "tokens": tok, "tokens2": tok}
    banks = (m.image_bank, m.text_bank)
    for step in range(2):
        before = [snapshot(b) for b in banks]
        loss, _, aux = m.loss(batch)
        assert [changed(s, b) for s, b in zip(before, banks)] == [[], []]
        m.update_state(aux)
        assert all(int(b.filled) == 16 * (step + 1) for b in banks)
        assert torch.allclose(m.image_bank.bank[16 * step:16 * (step + 1)], aux["image_anchors"].float())
    assert flat_captions(ds)  # the fixture's data is real


@pytest.mark.parametrize("name", ["simclr", "mocov2", "byol"])
def test_method_from_checkpoint_rebuilds_the_trained_method(name):
    torch.manual_seed(0)
    m = build_method(name, SMALL[name], MODEL)
    ckpt = {"config": {"method": {"name": name, "params": SMALL[name]}, "model": MODEL}, "model": m.state_dict()}
    r = method_from_checkpoint(ckpt)
    assert type(r) is type(m)
    assert all(torch.equal(v, r.state_dict()[k]) for k, v in m.state_dict().items())
    with pytest.raises(ConfigError, match="holds no clpoison config"):
        method_from_checkpoint({"model": m.state_dict()})
    bad = {**ckpt, "config": {"method": {"name": name, "params": SMALL[name]}, "model": {"arch": "convnet", "width": 16}}}
    with pytest.raises(ConfigError, match="do not fit"):
        method_from_checkpoint(bad)
