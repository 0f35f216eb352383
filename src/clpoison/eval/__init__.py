"""Evaluation: feature extraction, kNN, linear probe and shared metric definitions."""

from .features import extract_features
from .knn import KNNClassifier, knn_top1
from .linear import LinearProbe, linear_top1
from .metrics import top1_accuracy

__all__ = ["extract_features", "KNNClassifier", "knn_top1", "LinearProbe", "linear_top1", "top1_accuracy"]
