"""The data side: where rows come from, how a task family turns them into batches, and the domain packs' records.

- `source`: the rows of each split — a pack's bundled sample, a ``data_dir`` layout, split files or a Hub dataset —
  read once and checked once; missing validation/test splits carved by `splits`.
- codecs, one per task family (check -> encode -> collate), each declaring the batch keys it produces
  (``batch_keys``; each head declares the keys it reads): `classification`, `token_classification`,
  `question_answering`, `summarization`, `dialogue`, `text_corpus` (raw text for language modelling).
- `multitask`: several tasks' DataModules as one, each row naming its task's adapter (mixed-task batches).
- `pack`: a domain pack as a record (source defaults, columns, label set, codec, data card).
- file formats: `readers` (CSV/TSV/JSONL/parquet tables), `conll_format`, `squad_format`; `loaders`: resumable,
  seeded data loaders.
"""

from lightning_adapters.data.augmentation import Augmentation
from lightning_adapters.data.classification import TextClassificationDataModule, TextCollator
from lightning_adapters.data.dialogue import DialogueDataModule
from lightning_adapters.data.lengths import count_truncated, fit_max_length, position_limit
from lightning_adapters.data.loaders import (
    EpochShuffleSampler,
    LengthGroupedSampler,
    SplitDataModule,
    check_limits,
    row_ids,
)
from lightning_adapters.data.multitask import MultiTaskDataModule
from lightning_adapters.data.question_answering import QADataModule
from lightning_adapters.data.readers import READERS, Table
from lightning_adapters.data.source import SPLITS, existing_file, read_splits, read_table
from lightning_adapters.data.summarization import SummarizationDataModule
from lightning_adapters.data.text_corpus import TextCorpusDataModule
from lightning_adapters.data.token_classification import TokenClassificationDataModule

ClassificationDataModule = TextClassificationDataModule  # the family's name, as the heads spell it

__all__ = ["Augmentation", "ClassificationDataModule", "DialogueDataModule", "EpochShuffleSampler",
           "LengthGroupedSampler", "MultiTaskDataModule", "QADataModule", "READERS", "SPLITS", "SplitDataModule",
           "SummarizationDataModule", "Table", "TextClassificationDataModule", "TextCollator", "TextCorpusDataModule",
           "TokenClassificationDataModule", "check_limits", "count_truncated", "existing_file", "fit_max_length",
           "position_limit", "read_splits", "read_table", "row_ids"]
