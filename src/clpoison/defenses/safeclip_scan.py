"""``clpoison scan``: audit image–caption data with a trained CLIP (SafeCLIP's similarity split as a tool).

Every (image, caption) pair is scored by the cosine similarity of its CLIP embeddings (clean images through the
eval transform, the captions as written) and the posterior of the clean component of a 2-component GMM on those
similarities (:func:`~clpoison.defenses.safeclip_split.gmm_clean_posterior`). The CSV lists the pairs ranked by
risk (lowest posterior first, then lowest similarity); ``risky`` = posterior < threshold (0.9, SafeCLIP's first
split). With a manifest, an image listed in ``poisoned_indices``/``added_indices`` makes all its pairs poisons, and
the summary has ROC-AUC (risk = −similarity), precision and recall of the risky set.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ..data.caption_loader import flat_captions
from ..eval.zeroshot import encode_images, encode_texts
from ..utils.io import atomic_write_text
from .safeclip_split import gmm_clean_posterior


def score_pairs(model: Any, tokenizer: Any, dataset: Any, transform: Any, context_length: int,
                device: torch.device, batch_size: int = 512) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(similarity per pair, owning image index per pair, captions)."""
    texts = flat_captions(dataset)
    owner = np.repeat(np.arange(len(dataset)), [len(c) for c in dataset.captions])
    img = encode_images(model, dataset.images, transform, batch_size=batch_size, device=device)
    txt = encode_texts(model, tokenizer, texts, context_length, device=device)
    img = torch.nn.functional.normalize(img.float(), dim=1)
    txt = torch.nn.functional.normalize(txt.float(), dim=1)
    sims = (img[torch.as_tensor(owner)] * txt).sum(1).cpu().numpy()
    return sims, owner, texts


def scan_table(sims: np.ndarray, owner: np.ndarray, texts: list[str], poisons: Optional[np.ndarray] = None,
               threshold: float = 0.9) -> tuple[str, dict[str, Any]]:
    """(CSV text ranked by risk, summary)."""
    p = gmm_clean_posterior(sims)
    order = np.lexsort((sims, p))  # p ascending, then similarity ascending
    is_poison = np.isin(owner, poisons) if poisons is not None else None
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["rank", "index", "caption_index", "similarity", "p_clean", "risky"]
               + (["poison"] if is_poison is not None else []) + ["caption"])
    for r, i in enumerate(order):
        row = [r + 1, int(owner[i]), int(i), f"{sims[i]:.6f}", f"{p[i]:.6f}", int(p[i] < threshold)]
        if is_poison is not None:
            row.append(int(is_poison[i]))
        w.writerow(row + [texts[i]])
    risky = p < threshold
    summary: dict[str, Any] = {"pairs": int(len(sims)), "risky": int(risky.sum()), "threshold": threshold,
                               "similarity_mean": float(sims.mean()) if len(sims) else float("nan")}
    if is_poison is not None:
        from sklearn.metrics import roc_auc_score

        n_p = int(is_poison.sum())
        hit = int((risky & is_poison).sum())
        summary.update({
            "poisons": n_p,
            "roc_auc": float(roc_auc_score(is_poison, -sims)) if 0 < n_p < len(sims) else float("nan"),
            "precision": hit / int(risky.sum()) if risky.any() else 0.0,
            "recall": hit / n_p if n_p else float("nan"),
            "poisons_in_top_k": int(is_poison[order[:n_p]].sum()) if n_p else 0,
        })
    return buf.getvalue(), summary


def scan_to_csv(out: str | Path, *args, **kwargs) -> dict[str, Any]:
    text, summary = scan_table(*args, **kwargs)
    atomic_write_text(out, text)
    return summary
