"""SafeCLIP's loss terms and memory bank equal naive loop-based references (like tests/test_losses.py)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from clpoison.defenses.safeclip.memory_bank import MemoryBank
from clpoison.defenses.safeclip.safeclip_objective import cross_aug_clip_loss, inmodal_term


def naive_ce_rows(logits: list[list[float]]) -> float:
    """Mean over rows of -log softmax(row)[row index]."""
    total = 0.0
    for i, row in enumerate(logits):
        m = max(row)
        total += -(row[i] - m - math.log(sum(math.exp(v - m) for v in row)))
    return total / len(logits)


def naive_scaled(a: torch.Tensor, b: torch.Tensor, s: float) -> list[list[float]]:
    return [[s * float(a[i].double() @ b[j].double()) for j in range(len(b))] for i in range(len(a))]


def unit(n: int, d: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


def test_official_inmodal_term_matches_naive():
    """Official: CE(s · z2 · z1ᵀ) with the diagonal as positives (rows are the second view)."""
    z1, z2 = unit(6, 5, 0), unit(6, 5, 1)
    for s in (1.0, 14.3, 100.0):
        got = float(inmodal_term(z1, z2, torch.tensor(s)))
        assert abs(got - naive_ce_rows(naive_scaled(z2, z1, s))) < 1e-4 * max(1.0, got)


def test_nt_xent_inmodal_term_matches_naive():
    """``inmodal_loss: nt_xent`` is NT-Xent at temperature 1/s over the 2N views."""
    z1, z2 = unit(5, 4, 2), unit(5, 4, 3)
    s = 10.0
    z = torch.cat([z1, z2]).double()
    n2, n = 10, 5
    want = 0.0
    for i in range(n2):
        row = [s * float(z[i] @ z[k]) for k in range(n2) if k != i]
        pos = s * float(z[i] @ z[(i + n) % n2])
        m = max(row)
        want += -(pos - m - math.log(sum(math.exp(v - m) for v in row)))
    assert abs(float(inmodal_term(z1, z2, torch.tensor(s), kind="nt_xent")) - want / n2) < 1e-4


def test_cross_aug_clip_loss_matches_naive():
    """½[CE(s · I₁T₂ᵀ) + CE(s · T₁I₂ᵀ)]."""
    i1, i2, t1, t2 = (unit(4, 6, k) for k in range(4, 8))
    s = 20.0
    want = 0.5 * (naive_ce_rows(naive_scaled(i1, t2, s)) + naive_ce_rows(naive_scaled(t1, i2, s)))
    assert abs(float(cross_aug_clip_loss(i1, i2, t1, t2, torch.tensor(s))) - want) < 1e-4


def test_memory_bank_nearest_and_fifo_match_naive():
    """nearest = argmax cosine over the stored rows (the query itself while empty); push is FIFO over ``size``."""
    bank = MemoryBank(5, 3)
    stored: list[torch.Tensor] = []
    for step in range(4):
        z = unit(3, 3, 10 + step)
        got = bank.nearest(z)
        if not stored:
            assert torch.equal(got, z)
        else:
            for q, g in zip(z, got):
                sims = [float(q.double() @ r.double()) for r in stored]
                assert torch.equal(g, stored[max(range(len(stored)), key=sims.__getitem__)])
        bank.push(z)
        stored = (stored + list(z))[-5:]
        assert int(bank.filled) == len(stored)
        assert sorted(map(tuple, bank.bank[: len(stored)].tolist())) == sorted(map(tuple, torch.stack(stored).tolist()))


def test_inmodal_term_with_bank_uses_the_neighbour_as_anchor():
    z1, z2 = unit(4, 3, 20), unit(4, 3, 21)
    bank = MemoryBank(8, 3)
    bank.push(unit(8, 3, 22))
    nn_ = bank.nearest(z1)
    want = naive_ce_rows(naive_scaled(z2, nn_, 5.0))
    assert abs(float(inmodal_term(z1, z2, torch.tensor(5.0), bank)) - want) < 1e-4
