"""Frozen-encoder evaluation shared by every task: kNN and linear-probe top-1 on a labelled train/test split, and
the *attack context* (:class:`~clpoison.contexts.EvalContext`) that :meth:`clpoison.attacks.base.Attack.evaluate`
receives.

``settings`` is any object with ``batch_size``, ``knn_k``, ``knn_temperature``, ``linear`` and ``linear_l2`` (the
experiment config's ``eval`` section fits), so this module needs nothing from the experiment layer.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..contexts import EvalContext
from .features import extract_features
from .knn import KNNClassifier
from .linear import LinearProbe, linear_top1
from .metrics import top1_accuracy


def evaluate_encoder(encoder: torch.nn.Module, splits: Any, transform: torch.nn.Module, device: torch.device,
                     settings: Any, linear: bool = True, prefix: str = "") -> tuple[dict[str, float], dict[str, Any]]:
    """kNN (and linear-probe) top-1 of a frozen encoder: fitted on the clean labelled split (``splits.labelled``:
    the held-out downstream split when there is one, else train), tested on the test split. Returns the metrics and the fitted classifiers/features (``knn``, ``probe``,
    ``train_features``, ``test_features``, ``transform``) for the attack evaluation."""
    kw = dict(transform=transform, batch_size=settings.batch_size, device=device)
    fit = getattr(splits, "labelled", splits.train)
    ftr = extract_features(encoder, fit.images, **kw)
    fte = extract_features(encoder, splits.test.images, **kw)
    nc = fit.num_classes
    knn = KNNClassifier(settings.knn_k, settings.knn_temperature).fit(ftr, fit.labels, nc)
    metrics = {f"{prefix}knn_top1": top1_accuracy(knn.predict(fte), splits.test.labels)}
    extras: dict[str, Any] = {"knn": knn, "train_features": ftr, "test_features": fte, "transform": transform}
    if linear and settings.linear:
        probe = LinearProbe(settings.linear_l2).fit(ftr, fit.labels, nc)
        metrics[f"{prefix}linear_top1"] = top1_accuracy(probe.predict(fte), splits.test.labels)
        extras["probe"] = probe
    return metrics, extras


def poisoned_probe_metrics(context: EvalContext) -> dict[str, float]:
    """``linear_top1_poisoned_probe``: beside the clean probe (``linear_top1``, fitted on the clean labelled split,
    as the official availability-attack code does), the same linear probe fitted on the *poisoned* training images
    with their labels (``context.poisoned.train``: the released data, before any defense) and tested on the clean
    test split — the victim who only has the released data. Empty when the probe is off or a label is missing."""
    settings, fit = context.settings, context.poisoned.train
    test = context.splits.test
    if not settings.linear or fit.labels is None or len(fit.labels) == 0 or bool((fit.labels < 0).any()):
        return {}
    ftr = extract_features(context.encoder, fit.images, transform=context.transform,
                           batch_size=settings.batch_size, device=context.device)
    fte = context.test_features
    if fte is None:
        fte = extract_features(context.encoder, test.images, transform=context.transform,
                               batch_size=settings.batch_size, device=context.device)
    return {"linear_top1_poisoned_probe": linear_top1(ftr, fit.labels, fte, test.labels, fit.num_classes,
                                                      settings.linear_l2)}


def feature_embedder(encoder: torch.nn.Module, transform: torch.nn.Module, device: torch.device,
                     batch_size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """``embed(images_uint8) -> L2-normalised encoder features``."""

    def embed(images: torch.Tensor) -> torch.Tensor:
        f = extract_features(encoder, images, transform=transform, batch_size=batch_size, device=device)
        return torch.nn.functional.normalize(f, dim=1)

    return embed


def feature_classifier(encoder: torch.nn.Module, transform: torch.nn.Module, device: torch.device, batch_size: int,
                       classifier: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """``classify(images_uint8) -> predicted labels`` of a classifier fitted on the encoder's features."""

    def classify(images: torch.Tensor) -> torch.Tensor:
        f = extract_features(encoder, images, transform=transform, batch_size=batch_size, device=device)
        return classifier.predict(f).cpu()

    return classify


def attack_context(*, encoder: torch.nn.Module, splits: Any, poisoned: Any, settings: Any, device: torch.device,
                   classify: Callable[[torch.Tensor], torch.Tensor], embed: Callable[[torch.Tensor], torch.Tensor],
                   extras: dict) -> EvalContext:
    """What :meth:`Attack.evaluate` receives (:class:`~clpoison.contexts.EvalContext`). The contract every task
    (image SSL, CLIP) fulfils:

    * ``classify(images_uint8) -> LongTensor`` — the downstream classifier's predictions (linear probe on frozen
      features for image SSL; zero-shot for CLIP); used for CA and ASR so both come from one classifier;
    * ``embed(images_uint8) -> FloatTensor`` — L2-normalised encoder features (for embedding-level metrics);
    * ``splits`` (clean), ``poisoned`` (what was trained on), ``settings`` (the config's ``eval``), ``device``,
      ``encoder``, and from the evaluation's ``extras`` the kNN classifier, the transform and the test features.
    """
    return EvalContext(splits=splits, classify=classify, embed=embed, encoder=encoder, poisoned=poisoned,
                       device=device, settings=settings, knn=extras.get("knn"), transform=extras.get("transform"),
                       test_features=extras.get("test_features"))
