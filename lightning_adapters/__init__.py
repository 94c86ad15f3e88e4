"""lightning-adapters: parameter-efficient fine-tuning of any Hugging Face model under PyTorch Lightning."""

from lightning_adapters import moved
from lightning_adapters.adapter_folder import save_adapter
from lightning_adapters.callbacks import BestCheckpoint, EarlyStopping, JsonlPredictionWriter
from lightning_adapters.composition import Parallel, Stack
from lightning_adapters.data import (
    Augmentation,
    DialogueDataModule,
    MultiTaskDataModule,
    QADataModule,
    SummarizationDataModule,
    TextClassificationDataModule,
    TextCorpusDataModule,
    TokenClassificationDataModule,
)
from lightning_adapters.errors import UserInputError
from lightning_adapters.heads import (
    ClassificationHead,
    GenerationHead,
    LanguageModelingHead,
    QuestionAnsweringHead,
    TaskHead,
    TokenClassificationHead,
)
from lightning_adapters.module import AdapterModule, load_adapter
from lightning_adapters.named_adapters import TaskAdapter
from lightning_adapters.onnx_export import export_onnx
from lightning_adapters.paraphraser import Paraphraser
from lightning_adapters.predictor import Predictor
from lightning_adapters.registry import register_adapter_class
from lightning_adapters.strategies import (
    IA3,
    AdapterFusion,
    Bottleneck,
    FullFineTuning,
    Lora,
    PrefixTuning,
    PromptTuning,
    Strategy,
)

__all__ = ["AdapterFusion", "AdapterModule", "Augmentation", "BestCheckpoint", "Bottleneck", "ClassificationHead",
           "DialogueDataModule", "EarlyStopping", "FullFineTuning", "GenerationHead", "IA3", "JsonlPredictionWriter",
           "LanguageModelingHead", "Lora", "MultiTaskDataModule", "Parallel", "Paraphraser", "Predictor",
           "PrefixTuning", "PromptTuning", "QADataModule", "QuestionAnsweringHead", "Stack", "Strategy",
           "SummarizationDataModule", "TaskAdapter", "TaskHead", "TextClassificationDataModule", "TextCorpusDataModule",
           "TokenClassificationDataModule", "TokenClassificationHead", "UserInputError", "export_onnx", "load_adapter",
           "register_adapter_class", "save_adapter"]
__version__ = "0.1.0"
moved.install()  # old module paths fail with one line naming the new one
__getattr__ = moved.package_getattr
