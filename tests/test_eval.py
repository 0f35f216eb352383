"""kNN and linear probe reach ~100% on separable features and ~chance on random labels."""

import torch

from clpoison.eval import KNNClassifier, knn_top1, linear_top1, top1_accuracy


def _separable(n=400, d=16, c=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(c, d, generator=g) * 5
    y = torch.randint(0, c, (n,), generator=g)
    return centers[y] + torch.randn(n, d, generator=g) * 0.5, y


def test_knn_and_linear_separable():
    xtr, ytr = _separable(seed=0)
    xte, yte = _separable(seed=0)[0][:100], _separable(seed=0)[1][:100]
    assert knn_top1(xtr, ytr, xte, yte, 4, k=20) > 0.99
    assert linear_top1(xtr, ytr, xte, yte, 4) > 0.99


def test_random_labels_are_near_chance():
    g = torch.Generator().manual_seed(1)
    xtr, xte = torch.randn(1000, 16, generator=g), torch.randn(1000, 16, generator=g)
    ytr, yte = torch.randint(0, 4, (1000,), generator=g), torch.randint(0, 4, (1000,), generator=g)
    assert abs(knn_top1(xtr, ytr, xte, yte, 4) - 0.25) < 0.06
    assert abs(linear_top1(xtr, ytr, xte, yte, 4) - 0.25) < 0.06


def test_knn_weights_votes_by_similarity():
    bank = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    clf = KNNClassifier(k=3, temperature=0.1).fit(bank, labels, 2)
    s = clf.scores(torch.tensor([[1.0, 0.05]]))
    assert s[0, 0] > s[0, 1] > 0


def test_top1_accuracy():
    assert top1_accuracy(torch.tensor([0, 1, 2, 2]), torch.tensor([0, 1, 1, 2])) == 0.75
