"""SafeCLIP's duplicate groups (``group_duplicates``, not in the paper): pairs that share an image or a caption are
split as one — each takes the lowest clean posterior (and similarity) of its group.

Why (docs/webcaps.md): Carlini & Terzis's targeted attack repeats the victim's image with K captions of the
adversarial class, and their backdoor draws its captions from the few training captions that name the target, so
its poisons repeat captions. SafeCLIP scores every pair on its own; on descriptive captions the pairs of one victim
rank anywhere from the best- to the worst-aligned tenth, so as the safe set grows, the better-aligned of a victim's
pairs (and the poisons whose borrowed caption happens to fit) are trained with the CLIP loss — two safe pairs of a
victim were enough to move it. An image (or caption) is as trustworthy as its least-aligned pair.

Keys are exact: a seeded polynomial hash of the stored uint8 pixels and of the caption's tokens (what the model
sees), 48 bits each, computed on the device in one pass over the data through the batch source's ``score`` (in
memory or streamed), once per run. An attacker
who perturbs each copy of a victim, or paraphrases each caption, is not grouped; a key shared by more than
``max_size`` pairs links nothing (a caption that common — "photo by a friend", CC3M's hypernymised "actor attends
the premiere" — is no sign of a repeat, and grouping it would send every such pair to the risky set).

Example::

    >>> import numpy as np
    >>> labels = pair_groups(np.array([1, 2, 1, 3, 4]), np.array([7, 8, 9, 8, 5]))
    >>> [int(x) for x in labels]  # 0~2 share an image, 1~3 a caption
    [0, 1, 0, 1, 2]
    >>> [float(x) for x in group_min(np.array([0.9, 0.2, 0.1, 0.8, 0.5]), labels)]
    [0.1, 0.2, 0.1, 0.2, 0.5]
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

PRIMES = (16_777_213, 16_777_199)  # the largest primes below 2**24: each hash column is exact in float32
_CHUNK = 16_384


def row_digests(x: torch.Tensor, seed: int) -> torch.Tensor:
    """(B, ...) integer tensor → (B, 2) float32: per row two seeded polynomial hashes ``Σ x_j w_j mod P`` (weights
    ``w_j`` < 2**20 drawn from ``seed``), each an integer below 2**24. Equal rows give equal digests; two different
    rows collide with probability ≈ 2**-48. Integer arithmetic on ``x``'s device, in chunks (no int64 matmul)."""
    flat = x.reshape(len(x), -1).long()
    d = flat.shape[1]
    g = torch.Generator().manual_seed(int(seed))
    cols = []
    for p in PRIMES:
        w = torch.randint(1, 2 ** 20, (d,), generator=g).to(flat.device)
        acc = torch.zeros(len(flat), dtype=torch.long, device=flat.device)
        for s in range(0, d, _CHUNK):
            acc = (acc + (flat[:, s:s + _CHUNK] * w[s:s + _CHUNK]).sum(1)) % p
        cols.append(acc)
    return torch.stack(cols, 1).float()


def digest_keys(columns: np.ndarray) -> np.ndarray:
    """(N, 2) digest columns (float32 integers) → (N,) int64 keys."""
    c = np.asarray(columns, dtype=np.float64).round().astype(np.int64)
    return c[:, 0] * (1 << 24) + c[:, 1]


def pair_groups(image_keys: Optional[np.ndarray], caption_keys: Optional[np.ndarray],
                max_size: int = 64) -> np.ndarray:
    """Group label (0..G-1, in order of first appearance) of each pair: the connected components of "shares an image
    key or a caption key with" — only keys held by 2..``max_size`` pairs link."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(image_keys if image_keys is not None else caption_keys)
    rows, cols, offset = [], [], n
    for keys in (image_keys, caption_keys):
        if keys is None:
            continue
        _, inv, counts = np.unique(np.asarray(keys), return_inverse=True, return_counts=True)
        inv = inv.reshape(-1)
        linked = (counts[inv] > 1) & (counts[inv] <= max_size)
        rows.append(np.flatnonzero(linked))
        cols.append(offset + inv[linked])
        offset += len(counts)
    r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    c = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    graph = coo_matrix((np.ones(len(r)), (r, c)), shape=(offset, offset))
    _, labels = connected_components(graph, directed=False)
    _, first, compact = np.unique(labels[:n], return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))  # relabel by first appearance
    return order[compact.reshape(-1)].astype(np.int64)


def group_min(values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each element replaced by the minimum over its group."""
    v = np.asarray(values, dtype=np.float64)
    low = np.full(int(labels.max()) + 1 if len(labels) else 0, np.inf)
    np.minimum.at(low, labels, v)
    return low[labels]


def veto(safe: np.ndarray, n: int, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``group_rule: veto``: of a cut's ``safe`` rows (of ``n``), keep those whose whole group is in it; returns
    (safe, risky), sorted."""
    inside = np.zeros(n, dtype=bool)
    inside[np.asarray(safe, dtype=np.int64)] = True
    whole = group_min(inside.astype(np.float64), labels) > 0.5
    return np.flatnonzero(whole), np.flatnonzero(~whole)


def refill(safe: np.ndarray, n: int, labels: np.ndarray, order: np.ndarray, target: int) -> tuple[np.ndarray, np.ndarray]:
    """``group_rule: veto_refill``: after a veto, add *ungrouped* pairs (alone in their group) outside ``safe`` in
    ``order`` (best first) until the safe set holds ``target`` pairs (or none is left); a pair that shares nothing
    cannot bring a group in. Returns (safe, risky), sorted."""
    inside = np.zeros(n, dtype=bool)
    inside[np.asarray(safe, dtype=np.int64)] = True
    alone = np.bincount(labels, minlength=1)[labels] == 1
    more = max(0, int(target) - int(inside.sum()))
    if more:
        cand = np.asarray(order, dtype=np.int64)
        cand = cand[alone[cand] & ~inside[cand]][:more]
        inside[cand] = True
    return np.flatnonzero(inside), np.flatnonzero(~inside)


def group_stats(labels: np.ndarray) -> dict[str, int]:
    """How many pairs are in a group of two or more, in how many groups, and the largest group."""
    sizes = np.bincount(labels) if len(labels) else np.zeros(0, np.int64)
    big = sizes[sizes > 1]
    return {"grouped_pairs": int(big.sum()), "groups": int(len(big)), "largest_group": int(sizes.max()) if len(sizes) else 0}
