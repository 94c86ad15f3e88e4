"""Task heads: what is predicted and how it is scored."""

from lightning_adapters.heads.base import TaskHead
from lightning_adapters.heads.classification import ClassificationHead
from lightning_adapters.heads.generation import GenerationHead

__all__ = ["ClassificationHead", "GenerationHead", "TaskHead"]
