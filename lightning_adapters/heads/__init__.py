"""Task heads: what is predicted and how it is scored."""

from lightning_adapters.heads.base import TaskHead
from lightning_adapters.heads.classification import ClassificationHead
from lightning_adapters.heads.generation import GenerationHead
from lightning_adapters.heads.language_modeling import LanguageModelingHead
from lightning_adapters.heads.question_answering import QuestionAnsweringHead
from lightning_adapters.heads.token_classification import EntityF1, TokenClassificationHead

__all__ = ["ClassificationHead", "EntityF1", "GenerationHead", "LanguageModelingHead", "QuestionAnsweringHead",
           "TaskHead", "TokenClassificationHead"]
