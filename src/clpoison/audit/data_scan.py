"""``clpoison scan``: audit image–caption data with a CLIP model (SafeCLIP's similarity score as a tool, and the
local-density scores of Detect-CLIP-Backdoor-Samples on the image embeddings: :mod:`clpoison.eval.density`).

Every (image, caption) pair of the data given — exactly its rows, in its order, nothing held out — is scored by the
cosine similarity of its CLIP embeddings (clean images through the eval transform, the captions as written). The
CSV lists the pairs ranked by risk (lowest similarity first) with the posterior of the clean component of a
2-component GMM on those similarities (:func:`~clpoison.defenses.safeclip.safeclip_split.gmm_clean_posterior`) for reference.

Which pairs are flagged ``risky`` is a cut chosen from the score distribution, not a fixed posterior:

* ``top_k=K``: the K lowest-similarity pairs;
* ``risky_fraction=F`` (default 0.05): the ``ceil(F·N)`` lowest-similarity pairs (a quantile cut);
* ``threshold=P`` (opt-in, the former rule): GMM clean posterior below P. At P = 0.9 (SafeCLIP's first split) this
  flagged every pair of a real caption set whose two GMM components overlap, so it is no longer the default.

With a manifest (:func:`check_manifest_matches`), the data is first checked to be the manifest's poisoned training
split — same row count, same fingerprint — and an image listed in ``poisoned_indices``/``added_indices`` makes all
its pairs poisons; the summary then has ROC-AUC (risk = −similarity), ``poisons_in_top_k`` (k = number of poison
pairs: threshold-free), and precision / recall of the risky set.

Several scores (``--score similarity kdist dao slof lid``) give one column each; the first ranks the CSV and
sets the risky cut, and with a manifest every score gets its own ROC-AUC / poisons in top k / precision / recall.
Density scores are higher = riskier (as the official code); a pair takes its image's score. With
``direction="two-sided"`` (``--direction two-sided``, a stated deviation) each density score is replaced by its
distance from the bulk in either direction (:func:`clpoison.eval.density.two_sided`) in a column named
``SCORE_two_sided`` (e.g. ``kdist_two_sided``), still higher = riskier.

Which model to scan with: a **reference model trained without the poisons** (e.g. on a trusted subset). A model
trained on the poisoned data has learned the poisoned pairs (that is what poisoning is), so their similarity is
not low any more; measured figures in docs/captions_protocol.md.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional, Sequence

import numpy as np
import torch

from ..data.captions.caption_loader import flat_captions
from ..errors import ConfigError, DataError
from ..eval.density import DEFAULT_K, DENSITY_SCORES, check_direction, density_scores
from ..eval.zeroshot import encode_images, encode_texts
from ..utils.io import atomic_write_text
from ..defenses.safeclip.safeclip_split import gmm_clean_posterior

DEFAULT_RISKY_FRACTION = 0.05
SCORES: tuple[str, ...] = ("similarity", *DENSITY_SCORES)


def score_pairs(model: Any, tokenizer: Any, dataset: Any, transform: Any, context_length: int,
                device: torch.device, batch_size: int = 512) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(similarity per pair, owning image index per pair, captions)."""
    values, owner, texts = pair_scores(model, tokenizer, dataset, transform, context_length, device, batch_size)
    return values["similarity"], owner, texts


def pair_scores(model: Any, tokenizer: Any, dataset: Any, transform: Any, context_length: int,
                device: torch.device, batch_size: int = 512, scores: Sequence[str] = ("similarity",),
                k: int = DEFAULT_K, neighbour_batch: Optional[int] = None, seed: int = 0, direction: str = "high",
                ) -> tuple[dict[str, np.ndarray], np.ndarray, list[str]]:
    """({score: value per pair}, owning image index per pair, captions). ``similarity``: cosine of the pair's
    embeddings (low = risky); the density scores (:mod:`clpoison.eval.density`, high = risky) are of the image
    embeddings (L2-normalised), one value per image given to each of its captions; with ``direction="two-sided"``
    their two-sided versions, keyed ``SCORE_two_sided``."""
    bad = [s for s in scores if s not in SCORES]
    if bad or not scores:
        raise ConfigError(f"unknown --score {bad[0] if bad else '(none)'}; choose from {', '.join(SCORES)}")
    check_direction(direction)
    texts = flat_captions(dataset)
    owner = np.repeat(np.arange(len(dataset)), [len(c) for c in dataset.captions])
    img = torch.nn.functional.normalize(
        encode_images(model, dataset.images, transform, batch_size=batch_size, device=device).float(), dim=1)
    out: dict[str, np.ndarray] = {}
    names = [s for s in scores if s != "similarity"]
    dens = density_scores(img.to(device), names, k, neighbour_batch, seed, direction=direction) if names else {}
    for name in scores:
        if name == "similarity":
            txt = encode_texts(model, tokenizer, texts, context_length, device=device)
            txt = torch.nn.functional.normalize(txt.float(), dim=1)
            out[name] = (img[torch.as_tensor(owner)] * txt).sum(1).cpu().numpy()
        else:
            out[score_column(name, direction)] = dens[name].cpu().numpy()[owner]
    return out, owner, texts


def score_column(name: str, direction: str = "high") -> str:
    """The CSV column / summary key of a score: the name, ``NAME_two_sided`` for a two-sided density score."""
    return name if name == "similarity" or direction == "high" else f"{name}_two_sided"


def low_is_risky(name: str, values: np.ndarray) -> np.ndarray:
    """The score turned so that a lower value is riskier (similarity as is, a density score negated)."""
    return values if name == "similarity" else -values


def check_manifest_matches(manifest: dict, data: Any, where: str) -> None:
    """Raise one :class:`DataError` line unless ``data`` is the manifest's poisoned training split: the row count
    (``output.train_size``) first, then the fingerprint (``output.fingerprint.train``; class order does not
    matter). The clean source data (``source.fingerprint.train``) is named as such."""
    from ..poisoned.manifest import fingerprint, in_class_order

    try:
        n_out = int(manifest["output"]["train_size"])
        want = manifest["output"]["fingerprint"]["train"]
    except (KeyError, TypeError, ValueError):
        raise DataError("the manifest lacks output.train_size / output.fingerprint; re-export the poisoned data") from None
    if len(data) != n_out:
        raise DataError(f"{where} has {len(data)} images but the manifest's poisoned training split has {n_out}; "
                        "scan the train.csv the manifest was exported with (no hold-out, no limit)")
    names = list(manifest.get("source", {}).get("class_names") or [])
    got = fingerprint(in_class_order(data, names))
    if got != want and getattr(data, "labels", None) is not None and not getattr(data, "class_names", None) and names:
        # webdataset shards hold class indices (KEY.cls) but no names: name them as the manifest's source does
        got = fingerprint(SimpleNamespace(images=data.images, captions=data.captions, labels=data.labels,
                                          class_names=names, sizes=data.sizes))
    if got != want and getattr(data, "labels", None) is not None and not getattr(data, "class_names", None):
        # an export of unlabelled data writes an empty label column: compare as unlabelled
        got = fingerprint(SimpleNamespace(images=data.images, captions=data.captions, labels=None, class_names=[],
                                          sizes=data.sizes))
    if got != want:
        clean = got == manifest.get("source", {}).get("fingerprint", {}).get("train")
        raise DataError(f"{where} is the clean data the manifest's attack started from, not its poisoned output; "
                        "scan the exported train.csv" if clean else
                        f"{where} does not match the manifest's poisoned training data (fingerprint); scan the "
                        "data the manifest was exported with, at its native size (no --image-size)")


def risky_mask(sims: np.ndarray, p_clean: np.ndarray, risky_fraction: Optional[float] = None,
               top_k: Optional[int] = None, threshold: Optional[float] = None) -> tuple[np.ndarray, dict]:
    """The risky pairs under one cut rule (see the module doc) and the rule's description."""
    given = [x is not None for x in (risky_fraction, top_k, threshold)]
    if sum(given) > 1:
        raise ConfigError("give only one of --risky-fraction, --top-k and --threshold")
    n = len(sims)
    order = np.argsort(sims, kind="stable")
    if threshold is not None:
        if not 0.0 < threshold <= 1.0:
            raise ConfigError(f"--threshold {threshold} must lie in (0, 1] (a GMM clean posterior)")
        return p_clean < threshold, {"rule": "gmm_posterior", "threshold": threshold}
    if top_k is not None:
        if top_k < 0:
            raise ConfigError(f"--top-k {top_k} must be >= 0")
        k, rule = min(int(top_k), n), {"rule": "top_k", "top_k": int(top_k)}
    else:
        f = DEFAULT_RISKY_FRACTION if risky_fraction is None else float(risky_fraction)
        if not 0.0 <= f <= 1.0:
            raise ConfigError(f"--risky-fraction {f} must lie in [0, 1]")
        k, rule = min(n, math.ceil(f * n)), {"rule": "risky_fraction", "risky_fraction": f}
    mask = np.zeros(n, dtype=bool)
    mask[order[:k]] = True
    if k:
        rule["similarity_cut"] = float(sims[order[k - 1]])
    return mask, rule


def poison_scores(sims: np.ndarray, is_poison: np.ndarray) -> dict[str, Any]:
    """ROC-AUC (risk = −similarity) and the poisons among the k lowest pairs (k = number of poison pairs)."""
    from sklearn.metrics import roc_auc_score

    n_p = int(is_poison.sum())
    order = np.argsort(sims, kind="stable")
    return {"poisons": n_p,
            "roc_auc": float(roc_auc_score(is_poison, -sims)) if 0 < n_p < len(sims) else float("nan"),
            "poisons_in_top_k": int(is_poison[order[:n_p]].sum()) if n_p else 0}


def scan_table(sims: np.ndarray | dict[str, np.ndarray], owner: np.ndarray, texts: list[str],
               poisons: Optional[np.ndarray] = None, risky_fraction: Optional[float] = None,
               top_k: Optional[int] = None, threshold: Optional[float] = None,
               extra: Optional[dict[str, np.ndarray]] = None) -> tuple[str, dict[str, Any]]:
    """(CSV text ranked by risk, summary). ``sims``: the similarities, or ``{score: values}`` whose first score
    ranks (one column each; with a manifest each gets ``summary["scores"][name]``: ROC-AUC, poisons in top k,
    precision and recall under the same cut rule). ``extra`` adds named similarity columns (e.g. a second model's)."""
    values = dict(sims) if isinstance(sims, dict) else {"similarity": sims}
    first = next(iter(values))
    low = {name: low_is_risky(name, v) for name, v in values.items()}
    sim = values.get("similarity")
    p = gmm_clean_posterior(sim) if sim is not None else None
    if threshold is not None and first != "similarity":
        raise ConfigError("--threshold is a GMM posterior of the similarity; rank by similarity or use --top-k / "
                          "--risky-fraction")
    masks = {}
    for name, v in low.items():
        if name == first or threshold is None:
            masks[name] = risky_mask(v, p if name == "similarity" else v, risky_fraction, top_k, threshold)
    risky, rule = masks[first]
    if "similarity_cut" in rule and first != "similarity":
        rule[f"{first}_cut"] = -rule.pop("similarity_cut")
    order = np.lexsort((p, low[first])) if first == "similarity" else np.argsort(low[first], kind="stable")
    is_poison = np.isin(owner, poisons) if poisons is not None else None
    extra = extra or {}
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["rank", "index", "caption_index", *values, *[f"similarity_{k}" for k in extra]]
               + (["p_clean"] if p is not None else []) + ["risky"] + (["poison"] if is_poison is not None else [])
               + ["caption"])
    for r, i in enumerate(order):
        row = [r + 1, int(owner[i]), int(i), *[f"{v[i]:.6f}" for v in values.values()],
               *[f"{v[i]:.6f}" for v in extra.values()]] + ([f"{p[i]:.6f}"] if p is not None else []) + [int(risky[i])]
        if is_poison is not None:
            row.append(int(is_poison[i]))
        w.writerow(row + [texts[i]])
    summary: dict[str, Any] = {"pairs": int(len(owner)), "risky": int(risky.sum()), **rule}
    if sim is not None:
        summary["similarity_mean"] = float(sim.mean()) if len(sim) else float("nan")
    if is_poison is not None:
        per = {name: {**poison_scores(low[name], is_poison), **_precision_recall(masks[name][0], is_poison)}
               for name in masks}
        summary.update(per[first])
        if len(values) > 1:
            summary["scores"] = per
        for k, v in extra.items():
            summary[f"roc_auc_{k}"] = poison_scores(v, is_poison)["roc_auc"]
    return buf.getvalue(), summary


def _precision_recall(risky: np.ndarray, is_poison: np.ndarray) -> dict[str, float]:
    hit, n_p = int((risky & is_poison).sum()), int(is_poison.sum())
    return {"precision": hit / int(risky.sum()) if risky.any() else 0.0, "recall": hit / n_p if n_p else float("nan")}


def scan_to_csv(out: str | Path, *args, **kwargs) -> dict[str, Any]:
    text, summary = scan_table(*args, **kwargs)
    atomic_write_text(out, text)
    return summary
