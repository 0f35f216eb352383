"""Linear probe: multinomial logistic regression on cached frozen features.

Features are standardised with the training mean/std, then a linear layer is fitted by full-batch L-BFGS on
cross-entropy + L2 (weight ``l2``), on the device holding the features. This is the closed-form-style probe the
small-scale literature uses in place of 100-epoch SGD probes; the same fitted :class:`LinearProbe` is reused
to score triggered inputs (ASR), so clean accuracy and ASR always come from one classifier.

Example::

    >>> import torch
    >>> from clpoison.eval.linear import LinearProbe
    >>> x = torch.randn(200, 8); y = (x[:, 0] > 0).long()
    >>> probe = LinearProbe().fit(x, y, 2)
    >>> float((probe.predict(x) == y).float().mean()) > 0.95
    True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import TrainingDiverged
from .metrics import top1_accuracy


class LinearProbe:
    def __init__(self, l2: float = 1e-4, max_iter: int = 300, tol: float = 1e-7) -> None:
        if l2 < 0:
            raise ValueError(f"l2={l2} must be >= 0")
        self.l2, self.max_iter, self.tol = l2, max_iter, tol

    def fit(self, features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> "LinearProbe":
        if len(features) != len(labels):
            raise ValueError(f"{len(features)} features but {len(labels)} labels; they must match")
        x = features.float()
        if not torch.isfinite(x).all():
            raise TrainingDiverged("the encoder's features are not finite (inf/nan): training diverged; lower train.lr")
        self.mean = x.mean(0, keepdim=True)
        self.std = x.std(0, keepdim=True).clamp_min(1e-6)
        x = (x - self.mean) / self.std
        y = labels.long().to(x.device)
        self.weight = torch.zeros(num_classes, x.shape[1], device=x.device, requires_grad=True)
        self.bias = torch.zeros(num_classes, device=x.device, requires_grad=True)
        opt = torch.optim.LBFGS(
            [self.weight, self.bias], lr=1.0, max_iter=self.max_iter, tolerance_grad=self.tol,
            tolerance_change=1e-10, history_size=20, line_search_fn="strong_wolfe",
        )

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(x @ self.weight.t() + self.bias, y) + 0.5 * self.l2 * self.weight.pow(2).sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            try:
                opt.step(closure)
            except RuntimeError as e:  # e.g. "value cannot be converted to type float without overflow"
                raise TrainingDiverged(f"the linear probe overflowed on the encoder's features ({e}): training "
                                       "diverged; lower train.lr") from None
        if not (torch.isfinite(self.weight).all() and torch.isfinite(self.bias).all()):
            raise TrainingDiverged("the linear probe is not finite on the encoder's features: training diverged; "
                                   "lower train.lr")
        self.weight, self.bias = self.weight.detach(), self.bias.detach()
        return self

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        x = (features.float().to(self.weight.device) - self.mean) / self.std
        return x @ self.weight.t() + self.bias

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        return self.logits(features).argmax(1)


def linear_top1(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    l2: float = 1e-4,
) -> float:
    """Top-1 accuracy (fraction in [0,1]) of a linear probe fitted on the train features."""
    probe = LinearProbe(l2).fit(train_features, train_labels, num_classes)
    return top1_accuracy(probe.predict(test_features), test_labels)
