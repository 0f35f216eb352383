"""A FIFO memory bank of embeddings with nearest-neighbour lookup (NNCLR, Dwibedi et al. ICCV 2021), used by
SafeCLIP's unimodal term (official ``memory_bank`` option).

Example::

    >>> import torch
    >>> bank = MemoryBank(4, 2)
    >>> z = torch.nn.functional.normalize(torch.tensor([[1.0, 0.1], [0.1, 1.0]]), dim=1)
    >>> torch.equal(bank.nearest(z), z)  # empty bank: the query itself
    True
    >>> bank.push(z); int(bank.filled)
    2
    >>> torch.equal(bank.nearest(z.flip(0)), z.flip(0))  # each row's nearest stored row
    True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MemoryBank(nn.Module):
    """FIFO bank of L2-normalised embeddings (NNCLR / lightly ``NNMemoryBankModule``): ``nearest(z)`` returns each
    row's nearest neighbour among the bank's contents (no gradient; ``z`` itself while the bank is empty) and
    changes nothing; ``push(z)`` stores ``z`` afterwards (the method does it in ``update_state``)."""

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.size = size
        self.register_buffer("bank", torch.zeros(size, dim), persistent=False)
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long), persistent=False)
        self.register_buffer("filled", torch.zeros((), dtype=torch.long), persistent=False)

    @torch.no_grad()
    def push(self, z: torch.Tensor) -> None:
        z = z.detach().float()[-self.size:]
        n, p = len(z), int(self.ptr)
        idx = (torch.arange(n, device=z.device) + p) % self.size
        self.bank[idx] = z
        self.ptr.fill_((p + n) % self.size)
        self.filled.fill_(min(self.size, int(self.filled) + n))

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        f = int(self.filled)
        if f == 0:
            return z
        with torch.no_grad():
            bank = self.bank[:f]
            return bank[(F.normalize(z.detach().float(), dim=1) @ bank.t()).argmax(1)].to(z.dtype)
