"""Attack metrics — one definition each, reused by every attack (Carlini & Terzis, CorruptEncoder, NLB, ...).

* **Backdoor ASR** (:func:`backdoor_asr`): among test images whose true label is *not* the target,
  the share that the downstream classifier (zero-shot for CLIP, linear probe for image SSL) assigns to the target
  once the trigger is pasted — ``#{y != t, f(x ⊕ p) = t} / #{y != t}`` (dossier §0; CorruptEncoder
  ``validate_conf_matrix``, NLB ``attack_success_rate``). Reported beside the clean accuracy of the same classifier
  and the no-trigger rate ``#{y != t, f(x) = t} / #{y != t}`` (:func:`backdoor_metrics`).
* **kNN ASR** (:func:`knn_asr`): the same with the weighted kNN over the clean training bank as the classifier (CTRL's
  official monitor, ``methods/base.py`` ``knn_monitor_fre``: k 200, τ 0.1): ``asr_knn`` over non-target images as
  above, and ``asr_knn_all`` = ``#{f(x ⊕ p) = t} / N`` over *every* test image, target class included — CTRL's
  official "backdoor accuracy" (all test images triggered and labelled target, ``loaders/diffaugment.py``).
* **Δcos** (:func:`delta_cos`): over non-target test images, the mean cosine of the triggered image's embedding to
  the target class's centroid in the clean training bank (the mean of the bank's L2-normalised features of that
  class, normalised) minus the same for the untriggered image. It moves before any decision flips (a
  lower-variance signal than ASR); 0 for a trigger that changes nothing. :func:`knn_backdoor_by_target` gives kNN
  ASR and Δcos for every possible target at once (a clean model's baseline for NLB's anchor, decided later).
* **Targeted success rate** (:func:`targeted_success`): the share of victims whose prediction is their adversarial
  label, with a Wilson score 95% interval (:func:`wilson_interval`).
* **Backdoor z-score** (:func:`backdoor_zscore`, label-free; Carlini & Terzis 2022, arXiv 2106.09667, as written
  in dossier §1.5): with L2-normalised embeddings f and distinct test images i ≠ j,
  ``z = (mean_{i≠j} cos(f(x_i ⊕ p), f(x_j ⊕ p)) − mean_{i≠j} cos(f(x_i), f(x_j))) / std_{i≠j} cos(f(x_i), f(x_j))``.
  A backdoor makes patched images collapse together, so z ≫ 0; a clean model gives z near 0.

Example (a rigged classifier that calls every image with a bright top-left pixel class 0)::

    >>> import torch
    >>> from clpoison.triggers import Trigger
    >>> t = Trigger({"pattern": "solid", "color": [255, 255, 255], "size": 2, "location": "top-left"})
    >>> clf = lambda x: (x[:, 0, 0, 0] < 255).long()
    >>> x = torch.zeros(4, 3, 8, 8, dtype=torch.uint8); y = torch.tensor([0, 1, 1, 1])
    >>> backdoor_asr(clf, x, y, target=0, trigger=t)["asr"]
    1.0
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Union

import torch

from .knn import KNNClassifier
from .metrics import top1_accuracy

Classify = Callable[[torch.Tensor], torch.Tensor]
Embed = Callable[[torch.Tensor], torch.Tensor]


def predict(classify: Classify, images: torch.Tensor) -> torch.Tensor:
    """The classifier's labels for ``images`` (int64, on the CPU)."""
    return torch.as_tensor(classify(images)).long().cpu().view(-1)


def backdoor_asr(classify: Classify, images: torch.Tensor, labels: torch.Tensor, target: int, trigger,
                 seed: Union[int, torch.Generator] = 0, sizes: Optional[torch.Tensor] = None) -> dict:
    """ASR over non-target images with the trigger pasted by ``trigger.apply(images, seed)``.

    Returns ``{"asr", "asr_hits", "asr_n"}``; ``asr`` is NaN when no non-target image exists.
    """
    labels = torch.as_tensor(labels).cpu()
    keep = labels != int(target)
    n = int(keep.sum())
    if n == 0:
        return {"asr": float("nan"), "asr_hits": 0, "asr_n": 0}
    idx = keep.nonzero().view(-1)
    x = images[idx.to(images.device)]
    triggered = trigger.apply(x, seed, None if sizes is None else sizes[idx])
    hits = int((predict(classify, triggered) == int(target)).sum())
    return {"asr": hits / n, "asr_hits": hits, "asr_n": n}


def asr_by_target(classify: Classify, images: torch.Tensor, labels: torch.Tensor, trigger, num_classes: int,
                  seed: Union[int, torch.Generator] = 0, sizes: Optional[torch.Tensor] = None) -> list[float]:
    """:func:`backdoor_asr` for every possible target class at once (one pass over the triggered images): entry
    ``t`` is ``#{y != t, f(x ⊕ p) = t} / #{y != t}`` (NaN for a class that every test image carries). A clean
    model's row of this is the baseline of an attack whose target is decided later (NLB's anchor label). Random
    placements are drawn over all the images, so for a ``random``-location trigger they differ from
    :func:`backdoor_asr`'s (drawn over the non-target images); fixed placements and CTRL give the same numbers."""
    labels = torch.as_tensor(labels).cpu()
    pred = predict(classify, trigger.apply(images, seed, sizes))
    out = []
    for t in range(int(num_classes)):
        keep = labels != t
        out.append(float((pred[keep] == t).float().mean()) if bool(keep.any()) else float("nan"))
    return out


def backdoor_metrics(classify: Classify, images: torch.Tensor, labels: torch.Tensor, target: int, trigger,
                     seed: Union[int, torch.Generator] = 0, sizes: Optional[torch.Tensor] = None) -> dict:
    """ASR, the clean accuracy of the same classifier, and the no-trigger non-target → target rate."""
    labels = torch.as_tensor(labels).cpu()
    pred = predict(classify, images)
    keep = labels != int(target)
    out = backdoor_asr(classify, images, labels, target, trigger, seed, sizes)
    out["asr_clean_accuracy"] = top1_accuracy(pred, labels)
    out["asr_no_trigger"] = float((pred[keep] == int(target)).float().mean()) if bool(keep.any()) else float("nan")
    return out


def knn_asr(knn: KNNClassifier, embed: Embed, images: torch.Tensor, labels: torch.Tensor, target: int, trigger,
            seed: Union[int, torch.Generator] = 0, sizes: Optional[torch.Tensor] = None) -> dict:
    """kNN ASR with ``knn`` (a :class:`~.knn.KNNClassifier` fitted on the clean training bank) on ``embed``'s
    features: ``asr_knn`` (non-target images, :func:`backdoor_asr` with the same placements), ``asr_knn_all``
    (every image triggered, counted as a hit when called ``target``: CTRL's official definition) and the two
    no-trigger rates ``asr_knn_no_trigger`` / ``asr_knn_all_no_trigger`` of the same classifier."""
    labels = torch.as_tensor(labels).cpu()

    def classify(x: torch.Tensor) -> torch.Tensor:
        return knn.predict(torch.as_tensor(embed(x))).cpu()

    t = int(target)
    clean = predict(classify, images)
    every = predict(classify, trigger.apply(images, seed, sizes))
    keep = labels != t
    return {"asr_knn": backdoor_asr(classify, images, labels, t, trigger, seed, sizes)["asr"],
            "asr_knn_all": float((every == t).float().mean()) if len(every) else float("nan"),
            "asr_knn_no_trigger": float((clean[keep] == t).float().mean()) if bool(keep.any()) else float("nan"),
            "asr_knn_all_no_trigger": float((clean == t).float().mean()) if len(clean) else float("nan")}


def delta_cos(embed: Embed, images: torch.Tensor, labels: torch.Tensor, target: int, trigger, bank: torch.Tensor,
              bank_labels: torch.Tensor, seed: Union[int, torch.Generator] = 0,
              sizes: Optional[torch.Tensor] = None) -> float:
    """Δcos (module docstring) of non-target ``images`` against the centroid of ``bank`` rows labelled ``target``;
    the trigger placements are :func:`backdoor_asr`'s. NaN without non-target images or target-class bank rows."""
    labels = torch.as_tensor(labels).cpu()
    rows = torch.as_tensor(bank_labels).cpu() == int(target)
    keep = (labels != int(target)).nonzero().view(-1)
    if not bool(rows.any()) or not len(keep):
        return float("nan")
    unit = torch.nn.functional.normalize
    centroid = unit(unit(bank.float().cpu()[rows], dim=1).mean(0), dim=0)
    x = images[keep.to(images.device)]
    triggered = trigger.apply(x, seed, None if sizes is None else sizes[keep])

    def mean_cos(batch: torch.Tensor) -> torch.Tensor:
        return (unit(torch.as_tensor(embed(batch)).float().cpu(), dim=1) @ centroid).mean()

    return float(mean_cos(triggered) - mean_cos(x))


def knn_backdoor_by_target(knn: KNNClassifier, embed: Embed, images: torch.Tensor, labels: torch.Tensor, trigger,
                           seed: Union[int, torch.Generator] = 0, sizes: Optional[torch.Tensor] = None) -> dict:
    """:func:`knn_asr`'s ``asr_knn`` and :func:`delta_cos` (bank = ``knn``'s) for every possible target class at once,
    embedding the clean and the triggered images once: ``{"asr_knn": [...], "delta_cos": [...]}`` indexed by class
    (NaN where undefined) — a clean model's baseline for an anchor decided later, as :func:`asr_by_target`. The
    placements are drawn over all the images (the same caveat as :func:`asr_by_target` for ``random`` locations)."""
    labels = torch.as_tensor(labels).cpu()
    unit = torch.nn.functional.normalize
    clean = unit(torch.as_tensor(embed(images)).float().cpu(), dim=1)
    trig = unit(torch.as_tensor(embed(trigger.apply(images, seed, sizes))).float().cpu(), dim=1)
    pred = knn.predict(trig).cpu()
    bank, bank_labels = unit(knn.bank.float().cpu(), dim=1), knn.labels.cpu()
    asr, dcos = [], []
    for t in range(int(knn.num_classes)):
        keep, rows = labels != t, bank_labels == t
        asr.append(float((pred[keep] == t).float().mean()) if bool(keep.any()) else float("nan"))
        if not bool(keep.any()) or not bool(rows.any()):
            dcos.append(float("nan"))
            continue
        centroid = unit(bank[rows].mean(0), dim=0)
        dcos.append(float((trig[keep] @ centroid).mean() - (clean[keep] @ centroid).mean()))
    return {"asr_knn": asr, "delta_cos": dcos}


def wilson_interval(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval for k successes out of n trials (95% by default); (0, 1) when n = 0."""
    if n <= 0:
        return (0.0, 1.0)
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def targeted_success(classify: Classify, victims: torch.Tensor, adversarial_labels: Sequence[int],
                     reference_predictions: Optional[torch.Tensor] = None) -> dict:
    """Per-victim success (prediction == adversarial label), the rate and its Wilson 95% interval.

    With ``reference_predictions`` (the model's labels, :func:`predict`, for other images of the same set, e.g. the
    labelled test split without the victims), also the successes expected **by chance**: the sum over victims of the share of reference images the model assigns to
    that victim's adversarial label (``targeted_expected_by_chance``; ``targeted_label_shares`` per victim). A
    model whose zero-shot has collapsed onto a few classes "succeeds" on every victim whose adversarial label is one
    of them without having learned any poison; the successes are read against this figure.
    """
    adv = torch.as_tensor(list(adversarial_labels), dtype=torch.int64)
    if len(adv) == 0:
        return {"targeted_success_rate": float("nan"), "targeted_successes": 0, "targeted_n": 0,
                "targeted_ci95": [0.0, 1.0], "targeted_predictions": [], "targeted_outcomes": []}
    pred = predict(classify, victims)
    ok = (pred == adv).tolist()
    k, n = int(sum(ok)), len(ok)
    out = {"targeted_success_rate": k / n, "targeted_successes": k, "targeted_n": n,
           "targeted_ci95": list(wilson_interval(k, n)), "targeted_predictions": pred.tolist(),
           "targeted_outcomes": [bool(o) for o in ok]}
    if reference_predictions is not None and len(reference_predictions):
        ref = torch.as_tensor(reference_predictions).long().cpu().view(-1)
        shares = [float((ref == int(a)).float().mean()) for a in adv.tolist()]
        out.update(targeted_label_shares=shares, targeted_expected_by_chance=float(sum(shares)))
    return out


def _offdiag_cos(f: torch.Tensor) -> torch.Tensor:
    f = torch.nn.functional.normalize(f.float(), dim=1)
    s = f @ f.T
    n = len(f)
    return s[~torch.eye(n, dtype=torch.bool, device=s.device)]


def backdoor_zscore(embed: Embed, images: torch.Tensor, trigger, seed: Union[int, torch.Generator] = 0,
                    max_images: int = 1000) -> float:
    """Carlini's label-free backdoor z-score (definition in the module docstring) over ≤ ``max_images`` images."""
    x = images[:max_images]
    if len(x) < 3:
        return float("nan")
    clean = _offdiag_cos(torch.as_tensor(embed(x)).cpu())
    patched = _offdiag_cos(torch.as_tensor(embed(trigger.apply(x, seed))).cpu())
    sd = float(clean.std())
    return float((patched.mean() - clean.mean()) / sd) if sd > 0 else float("nan")
