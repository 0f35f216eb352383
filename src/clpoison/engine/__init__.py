"""The training engine: one loop for every method."""

from .checkpoint import read_checkpoint
from .optim import LARS, build_optimizer, warmup_cosine
from .schedules import Schedule, TrainingHooks, warmup_cosine_schedule
from .trainer import CHECKPOINT_NAME, TrainConfig, Trainer

__all__ = ["LARS", "build_optimizer", "warmup_cosine", "warmup_cosine_schedule", "Schedule", "TrainingHooks",
           "TrainConfig", "Trainer", "CHECKPOINT_NAME", "read_checkpoint"]
