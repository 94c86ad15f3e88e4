"""lightning-adapters: parameter-efficient fine-tuning of any Hugging Face model under PyTorch Lightning."""

from lightning_adapters.callbacks import JsonlPredictionWriter
from lightning_adapters.checkpoint import load_adapter, save_adapter
from lightning_adapters.data import TextClassificationDataModule
from lightning_adapters.errors import UserInputError
from lightning_adapters.heads import ClassificationHead, TaskHead
from lightning_adapters.module import AdapterModule
from lightning_adapters.strategies import IA3, Bottleneck, Lora, PrefixTuning, PromptTuning, Strategy

__all__ = ["IA3", "AdapterModule", "Bottleneck", "ClassificationHead", "JsonlPredictionWriter", "Lora", "PrefixTuning",
           "PromptTuning", "Strategy", "TaskHead", "TextClassificationDataModule", "UserInputError", "load_adapter",
           "save_adapter"]
__version__ = "0.1.0"
