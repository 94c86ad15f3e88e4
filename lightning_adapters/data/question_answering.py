"""Extractive question answering data: SQuAD-format JSON or a Hub dataset, article-disjoint splits, windowed features.

Reading (`lightning_adapters.data.squad_format`) checks everything in ``__init__``, before Lightning writes anything;
each problem is one `UserInputError` naming the file, the JSON path and the fix. Missing validation/test splits are
carved from the training data by whole articles (a ``data[]`` entry; a Hub dataset's title), seeded — so no context
is shared between splits.

Windowed features and their batch: `lightning_adapters.data.qa_features`. Validation/test/predict batches hold whole
questions (all their windows), so the per-question answer is known within a batch and DDP's sampler never splits a
question across ranks.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_info

from lightning_adapters.backbone import load_tokenizer, resolve
from lightning_adapters.data.loaders import SplitDataModule, row_ids
from lightning_adapters.data.qa_features import QACollator, check_room, encode_features
from lightning_adapters.data.readers import cell_text, rows_table
from lightning_adapters.data.source import load_hub_splits, read_splits
from lightning_adapters.data.splits import carve_missing_splits
from lightning_adapters.data.squad_format import QAExample, hub_rows_to_squad, parse_squad, read_squad_json
from lightning_adapters.errors import UserInputError


class QADataModule(SplitDataModule):
    """Extractive question answering from SQuAD-format JSON files or a Hub dataset (e.g. ``rajpurkar/squad``).

    QA has no label set: ``label_names`` is None. Training batches hold ``batch_size`` windows (features), shuffled;
    validation/test/predict batches hold ``eval_batch_size`` whole questions (with all their windows).

    Args:
        tokenizer: backbone alias, folder or hub id whose (fast) tokenizer is used (the CLI links it from the model).
        train_file: SQuAD JSON training file.
        validation_file: SQuAD JSON validation file; carved from the training articles when missing.
        test_file: SQuAD JSON test file; carved from the training articles when missing.
        predict_file: SQuAD JSON questions to answer (answers optional); the test split when missing. Prediction
            rows hold the question ``id`` and, where answers are given, ``gold_answers``.
        validation_fraction: share of the training articles (after the test split) held out for validation.
        test_fraction: share of the training articles held out for test.
        max_length: tokens per window (question + context + special tokens).
        stride: tokens shared by consecutive windows of a long context.
        batch_size: training batch size, in windows.
        eval_batch_size: validation/test/predict batch size, in questions (default: ``batch_size``).
    """

    batch_keys = {"input_ids": "token ids", "attention_mask": "token mask", "token_type_ids": "segment ids",
                  "context_mask": "context token mask", "start_positions": "answer start token",
                  "end_positions": "answer end token", "offsets": "token character offsets",
                  "example_index": "question index per window", "id": "question ids", "question": "question texts",
                  "context": "context texts", "answers": "gold answer texts", "meta": "row meta"}

    def __init__(self, tokenizer: str = "minilm", train_file: str | None = None, validation_file: str | None = None,
                 test_file: str | None = None, predict_file: str | None = None, hub_dataset: str | None = None,
                 hub_config: str | None = None, validation_fraction: float = 0.1, test_fraction: float = 0.1,
                 seed: int = 42, max_length: int = 384, stride: int = 128, batch_size: int = 16,
                 eval_batch_size: int | None = None, num_workers: int = 0,
                 group_by_length: bool = False) -> None:
        super().__init__()
        self.keep_options(tokenizer, seed, batch_size, eval_batch_size, num_workers, group_by_length,
                          validation_fraction, test_fraction, max_length=(max_length, 8, math.inf),
                          stride=(stride, 0, max_length // 2))
        resolve(tokenizer)  # a bad local tokenizer path fails now, before any log folder exists
        self.max_length, self.stride = max_length, stride
        self.label_names = None  # no label set; the CLI links this to the model
        hub = self.read_hub(hub_dataset, hub_config) if hub_dataset else {}
        self.sources = {split: source for split, (source, _) in hub.items()}
        files = {"train": train_file, "validation": validation_file, "test": test_file, "predict": predict_file}
        self.splits = read_splits(files, self._read_file, {split: rows for split, (_, rows) in hub.items()},
                                  nothing="no question-answering data — pass train_file (or hub_dataset), test_file "
                                          "or predict_file")
        self._carve_articles(validation_fraction, test_fraction)
        self.tokenizer = None  # loaded in setup(): the data checks above need no tokenizer
        self._datasets: dict[str, list] = {}

    def _read_file(self, path: Path, source: str, split: str) -> list[QAExample]:
        self.sources[split] = source
        return read_squad_json(path, source, labelled=split != "predict")

    def read_hub(self, name: str, config: str | None) -> dict[str, tuple[str, list[QAExample]]]:
        """``{split: (source, examples)}`` of a Hub dataset in the SQuAD schema."""
        splits = {}
        for split_name, (source, split) in load_hub_splits(name, config, "local SQuAD JSON files").items():
            missing = [c for c in ("id", "title", "context", "question", "answers") if c not in split.column_names]
            if missing:
                raise UserInputError(f"{source} has no column(s) {', '.join(missing)} — use a dataset in the SQuAD "
                                     "schema (id, title, context, question, answers{text, answer_start})")
            splits[split_name] = source, parse_squad(hub_rows_to_squad(split.to_dict()), source)
        return splits

    def _carve_articles(self, validation_fraction: float, test_fraction: float) -> None:
        """Missing test/validation splits: whole articles drawn from the training ones."""
        carved = carve_missing_splits(self.splits, {"test": test_fraction, "validation": validation_fraction},
                                      self.seed, keys=lambda examples: [e.article for e in examples],
                                      whole_groups=True, unit="training article(s)")
        for split in carved:
            self.sources[split] = f"{split} articles carved from {self.sources['train']}"

    # ---- tokenizing and batching -------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(self.tokenizer_name)
            if not self.tokenizer.is_fast:
                raise UserInputError(f"the tokenizer of '{self.tokenizer_name}' is not a fast tokenizer — extractive "
                                     "QA needs character offsets; use a backbone with a tokenizer.json")
        for split, examples in self.splits.items():
            if split in self._datasets:
                continue
            check_room(self.tokenizer, examples, self.max_length, self.stride, self.sources[split])
            features = encode_features(self.tokenizer, examples, self.max_length, self.stride)
            self._datasets[split] = [f for group in features for f in group] if split == "train" else features
        if not self.splits:  # built to encode in-memory rows (`for_rows`): no split to report
            return
        sizes = ", ".join(f"{split} {len(examples):,} questions ({len({e.article for e in examples})} articles)"
                          for split, examples in self.splits.items())
        rank_zero_info(f"data: {sizes}; train windows {len(self._datasets.get('train', [])):,}")

    def predict_items(self, rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
        """Rows holding ``question`` and ``context`` (ids: an ``id`` column, else the row index): per question, its
        windows, as a predict file's questions become."""
        table = rows_table(rows, "predict rows", ("question", "context"))
        examples = []
        for row, row_id in enumerate(row_ids(table.columns, len(rows))):
            question, context = (cell_text(table.columns[name][row], table.where(row), name)
                                 for name in ("question", "context"))
            empty = "question" if not question.strip() else "context" if not context.strip() else None
            if empty:
                raise UserInputError(f"{table.where(row)}: empty {empty} — fill it in or remove the row")
            examples.append(QAExample(row_id, question, context, [], [], f"{row}:"))
        check_room(self.tokenizer, examples, self.max_length, self.stride, table.source)
        return encode_features(self.tokenizer, examples, self.max_length, self.stride)

    def collator(self, stage: str) -> QACollator:
        return QACollator(self.tokenizer.pad_token_id)
