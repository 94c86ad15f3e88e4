"""Task heads: what is predicted and how it is scored."""

from lightning_adapters.heads.base import TaskHead
from lightning_adapters.heads.classification import ClassificationHead

__all__ = ["ClassificationHead", "TaskHead"]
