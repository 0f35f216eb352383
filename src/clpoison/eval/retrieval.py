"""Image→text and text→image retrieval recall@K (the CLIP paper's Flickr30k/MSCOCO protocol, §3.1.5 / Table 13).

Images may own several captions. Image→text recall@K = share of images with at least one of *their* captions among
the K captions most similar to the image; text→image recall@K = share of captions whose image is among the K most
similar images. Similarities are cosines of L2-normalised embeddings. Chance level is about K·(captions per image)/M
for i2t and K/N for t2i.

Example::

    >>> import torch
    >>> from clpoison.eval.retrieval import retrieval_recall
    >>> e = torch.eye(4)
    >>> retrieval_recall(e, e, torch.arange(4), ks=(1,))
    {'recall_at_1_i2t': 1.0, 'recall_at_1_t2i': 1.0}
"""

from __future__ import annotations

from typing import Sequence

import torch


@torch.no_grad()
def retrieval_recall(image_emb: torch.Tensor, text_emb: torch.Tensor, text_image: torch.Tensor,
                     ks: Sequence[int] = (1, 5, 10), chunk: int = 1024) -> dict[str, float]:
    """Recall@K both ways. ``text_image[j]`` is the index of the image caption ``j`` describes."""
    n, m = len(image_emb), len(text_emb)
    text_image = torch.as_tensor(text_image, dtype=torch.int64)
    if len(text_image) != m:
        raise ValueError(f"text_image has {len(text_image)} entries for {m} captions; give one image index per caption")
    if m == 0 or n == 0:
        raise ValueError("retrieval needs at least one image and one caption")
    img, txt = image_emb.float(), text_emb.float()
    out: dict[str, float] = {}
    # i2t: rank of the best-ranked own caption per image
    best_i2t = torch.empty(n, dtype=torch.int64)
    for s in range(0, n, chunk):
        sim = img[s : s + chunk] @ txt.t()  # (b, m)
        own = text_image.unsqueeze(0) == torch.arange(s, min(s + chunk, n)).unsqueeze(1)
        own_best = sim.masked_fill(~own, float("-inf")).max(1).values
        best_i2t[s : s + chunk] = (sim > own_best.unsqueeze(1)).sum(1)
    rank_t2i = torch.empty(m, dtype=torch.int64)
    for s in range(0, m, chunk):
        sim = txt[s : s + chunk] @ img.t()  # (b, n)
        own = sim.gather(1, text_image[s : s + chunk].unsqueeze(1))
        rank_t2i[s : s + chunk] = (sim > own).sum(1)
    for k in ks:
        out[f"recall_at_{k}_i2t"] = float((best_i2t < k).float().mean())
        out[f"recall_at_{k}_t2i"] = float((rank_t2i < k).float().mean())
    return out
