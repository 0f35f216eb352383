"""The pipeline's modality-specific steps, one task per modality, registered in :data:`TASKS` by modality."""

from .base import TASKS, Task, task_for
from .image import ImageTask
from .image_text import ImageTextTask

__all__ = ["TASKS", "Task", "task_for", "ImageTask", "ImageTextTask"]
