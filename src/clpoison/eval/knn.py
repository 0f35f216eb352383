"""Weighted k-nearest-neighbour classifier on frozen features (Wu et al. 2018, as used by InstDisc/MoCo/SimCLR
CIFAR baselines): cosine similarity, the top-k neighbours vote with weight exp(sim/τ). Defaults k=200, τ=0.1.

Example::

    >>> import torch
    >>> from clpoison.eval.knn import KNNClassifier
    >>> feats = torch.eye(4).repeat(5, 1)             # 20 points, 4 classes
    >>> labels = torch.arange(4).repeat(5)
    >>> KNNClassifier(k=5).fit(feats, labels, 4).predict(torch.eye(4)).tolist()
    [0, 1, 2, 3]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .metrics import top1_accuracy


class KNNClassifier:
    def __init__(self, k: int = 200, temperature: float = 0.1, chunk: int = 1024) -> None:
        if k < 1:
            raise ValueError(f"k={k} must be >= 1")
        if temperature <= 0:
            raise ValueError(f"temperature={temperature} must be > 0")
        self.k, self.temperature, self.chunk = k, temperature, chunk

    def fit(self, features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> "KNNClassifier":
        if len(features) != len(labels):
            raise ValueError(f"{len(features)} features but {len(labels)} labels; they must match")
        self.bank = F.normalize(features.float(), dim=1)
        self.labels = labels.long().to(self.bank.device)
        self.num_classes = num_classes
        return self

    @torch.no_grad()
    def scores(self, features: torch.Tensor) -> torch.Tensor:
        """(N, C) class scores: sum over the k nearest train points of exp(cos/τ) per class."""
        k = min(self.k, len(self.bank))
        out = []
        for s in range(0, len(features), self.chunk):
            q = F.normalize(features[s : s + self.chunk].float().to(self.bank.device), dim=1)
            sim, idx = (q @ self.bank.t()).topk(k, dim=1)
            w = (sim / self.temperature).exp()
            sc = torch.zeros(len(q), self.num_classes, device=q.device)
            sc.scatter_add_(1, self.labels[idx], w)
            out.append(sc)
        return torch.cat(out) if out else torch.zeros(0, self.num_classes)

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        return self.scores(features).argmax(1)


def knn_top1(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
) -> float:
    """Top-1 accuracy (fraction in [0,1]) of the weighted kNN classifier."""
    clf = KNNClassifier(k, temperature).fit(train_features, train_labels, num_classes)
    return top1_accuracy(clf.predict(test_features), test_labels)
