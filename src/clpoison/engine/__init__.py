"""The training engine: one loop for every method."""

from .optim import LARS, build_optimizer, warmup_cosine
from .trainer import CHECKPOINT_NAME, TrainConfig, Trainer

__all__ = ["LARS", "build_optimizer", "warmup_cosine", "TrainConfig", "Trainer", "CHECKPOINT_NAME"]
