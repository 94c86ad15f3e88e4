"""Text classification data from local files or the Hub: read and check eagerly, split, tokenize, pad per batch.

Everything a user can get wrong (a path, a column, a label, a malformed row) is found in ``__init__``, before Lightning
creates any log or checkpoint folder, and reported as one `UserInputError` line naming the file, the row and the fix.
Missing validation/test splits are carved from the training rows: seeded and stratified (each label keeps its share,
within one row), the test split first, then the validation split from what is left.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_info
from transformers import DataCollatorWithPadding

from lightning_adapters.backbone import load_tokenizer, resolve
from lightning_adapters.data.augmentation import Augmentation, AugmentedRows
from lightning_adapters.data.lengths import count_truncated, fit_max_length
from lightning_adapters.data.loaders import SplitDataModule, row_ids
from lightning_adapters.data.readers import (
    Table,
    column_labels,
    column_texts,
    infer_label_names,
    label_ids,
    rows_table,
)
from lightning_adapters.data.source import hub_tables, read_splits, read_table
from lightning_adapters.data.splits import carve_missing_splits
from lightning_adapters.errors import UserInputError

Split = tuple[list[str], list[int] | None, list[Any]]  # texts, label ids (None: unlabelled), row ids


def _rows_of(split: Split, rows: list[int]) -> Split:
    texts, labels, ids = split
    return [texts[r] for r in rows], None if labels is None else [labels[r] for r in rows], [ids[r] for r in rows]


def text_items(tokenizer, texts: list[str], ids: list[Any], max_length: int) -> list[dict[str, Any]]:
    """One item per text: token ids and mask (cut at ``max_length``), the text and ``meta`` with its row id."""
    encoded = tokenizer(texts, truncation=True, max_length=max_length, return_token_type_ids=False)
    return [{"input_ids": tokens, "attention_mask": mask, "text": text, "meta": {"id": row}}
            for tokens, mask, text, row in zip(encoded["input_ids"], encoded["attention_mask"], texts, ids,
                                               strict=True)]


class TextCollator:
    """Dynamic padding (each batch as wide as its longest input, the tokenizer's pad token and side); prediction
    batches also carry the raw ``text`` and each example's ``meta`` (row id, gold label)."""

    RAW = ("text", "meta")  # not padded: passed through as lists

    def __init__(self, tokenizer, with_text: bool = False) -> None:
        self.pad, self.with_text = DataCollatorWithPadding(tokenizer, return_tensors="pt"), with_text

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        batch = dict(self.pad([{k: v for k, v in item.items() if k not in self.RAW} for item in items]))
        if self.with_text:
            batch["text"] = [item["text"] for item in items]
            batch["meta"] = [item.get("meta") or {} for item in items]
        return batch


class TextClassificationDataModule(SplitDataModule):
    """Sequence classification from CSV/TSV/JSONL/parquet files or a Hub dataset.

    Args:
        train_file: training file (.csv, .tsv, .jsonl/.json lines, .parquet).
        validation_file: validation file; carved from the training rows when missing.
        test_file: test file; carved from the training rows when missing.
        predict_file: texts to predict (a label column is optional); the test split when missing. Prediction rows
            hold ``id`` (the file's ``id`` column, else the 0-based row index) and, given labels, ``gold_label``.
        text_column: column holding the input text.
        label_column: column holding the label (a name, or an integer index into ``label_names``).
        label_names: the label set in id order; default: the dataset's class names, else the sorted training labels.
        validation_fraction: share of the training rows (after the test split) held out for validation when missing.
        test_fraction: share of the training rows held out for test when missing.
        max_length: longest tokenized input; longer ones are truncated (setup logs how many); capped at the
            backbone's positions.
        augment: augment the training split (`lightning_adapters.data.augmentation.Augmentation`: token edits,
            paraphrases); validation, test and predict rows are never augmented.
    """

    batch_keys = {"input_ids": "token ids", "attention_mask": "token mask", "labels": "class id per row",
                  "text": "row texts", "meta": "row meta"}

    def __init__(self, tokenizer: str = "minilm", train_file: str | None = None, validation_file: str | None = None,
                 test_file: str | None = None, predict_file: str | None = None, hub_dataset: str | None = None,
                 hub_config: str | None = None, text_column: str = "text", label_column: str = "label",
                 label_names: list[str] | None = None, validation_fraction: float = 0.1, test_fraction: float = 0.1,
                 seed: int = 42, max_length: int = 128, batch_size: int = 32, eval_batch_size: int | None = None,
                 num_workers: int = 0,
                 group_by_length: bool = False, augment: Augmentation | None = None) -> None:
        super().__init__()
        self.keep_options(tokenizer, seed, batch_size, eval_batch_size, num_workers, group_by_length,
                          validation_fraction, test_fraction, max_length=(max_length, 1, math.inf))
        self.augment = augment
        resolve(tokenizer)  # a bad local tokenizer path fails now, before any log folder exists
        self.text_column, self.label_column, self.max_length = text_column, label_column, max_length
        hub, class_names = hub_tables(hub_dataset, hub_config, label_column) if hub_dataset else ({}, None)
        files = {"train": train_file, "validation": validation_file, "test": test_file, "predict": predict_file}
        tables = read_splits(files, lambda path, source, split: self.read_table(path, source), hub)
        self.label_names: list[str] = self._label_names(tables, label_names, class_names)
        self.splits: dict[str, Split] = {
            split: self._examples(table, labelled=split != "predict") for split, table in tables.items()}
        carve_missing_splits(self.splits, {"test": self.test_fraction, "validation": self.validation_fraction},
                             self.seed, keys=lambda split: split[1], take=_rows_of)
        train_labels = self.splits["train"][1] if "train" in self.splits else None
        # training rows per label, for ClassificationHead(class_weights="balanced") (the CLI links it)
        self.label_counts: list[int] | None = None if train_labels is None else [
            train_labels.count(i) for i in range(len(self.label_names))]
        self.tokenizer = None  # loaded in setup(): the data checks above need no tokenizer
        self._datasets: dict[str, list[dict[str, Any]]] = {}
        self.truncated: dict[str, int] = {}  # split -> rows longer than max_length (cut), counted in setup()

    # ---- reading and checking (all in __init__) ----------------------------------------------------------------
    def read_table(self, path: Path, source: str) -> Table:
        """Read one local file by its extension; packs override this to add formats."""
        return read_table(path, source)

    def _label_names(self, tables: dict[str, Table], given: list[str] | None, class_names: list[str] | None
                     ) -> list[str]:
        if given is not None:
            if not given or len(set(given)) != len(given):
                raise UserInputError(f"label_names must be a non-empty list of distinct names, got {given} — fix it")
            return [str(name) for name in given]
        if class_names:
            return class_names
        if "train" not in tables:
            raise UserInputError("no training data to take the label names from — pass train_file (or hub_dataset), "
                                 "or label_names")
        train = tables["train"]
        return infer_label_names(column_labels(train, self.label_column, "label_column"), train)

    def _examples(self, table: Table, labelled: bool) -> Split:
        texts = column_texts(table, self.text_column, "text_column")
        blank = next((row for row, text in enumerate(texts) if not text.strip()), None)
        if blank is not None:
            raise UserInputError(f"{table.where(blank)}: empty text in column '{self.text_column}' — fill it in or "
                                 "remove the row")
        ids = row_ids(table.columns, len(texts))
        if not labelled and self.label_column not in table.columns:
            return texts, None, ids
        return texts, label_ids(column_labels(table, self.label_column, "label_column"), table, self.label_names), ids

    # ---- tokenizing and batching -------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(self.tokenizer_name)
            self.max_length = fit_max_length(self.max_length, self.tokenizer_name, self.tokenizer)
        for split, rows in self.splits.items():
            if split in self._datasets:
                continue
            items = self._datasets[split] = self.encode(rows)
            self.truncated[split] = count_truncated(self.tokenizer, rows[0], [item["input_ids"] for item in items],
                                                    self.max_length)
        if self.augment is not None and stage in (None, "fit") and "train" in self._datasets:
            self._augment_training()
        if not self.splits:  # built to encode in-memory rows (`for_rows`): no split to report
            return
        sizes = ", ".join(f"{split} {len(split_rows[0]):,}" for split, split_rows in self.splits.items())
        cut = ", ".join(f"{split} {count:,}" for split, count in self.truncated.items() if count)
        rank_zero_info(f"data: {sizes} rows; {len(self.label_names)} labels"
                       + (f"; rows cut at max_length={self.max_length} tokens: {cut}" if cut else ""))

    # ---- augmentation (training split only) --------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Lightning's rank-0 hook for writes: complete the paraphrase cache (`Augmentation.complete_cache`)."""
        if self.augment is not None and self.augment.paraphrases is not None and "train" in self.splits:
            self.augment.complete_cache(self.splits["train"][0])

    def _augment_training(self) -> None:
        """The training items with their edited copies and cached paraphrases (`AugmentedRows`); once."""
        items = self._datasets["train"]
        if isinstance(items, AugmentedRows):
            return
        texts, labels, ids = self.splits["train"]
        extra = []
        if self.augment.paraphrases is not None:  # a paraphrase that is empty or the text itself adds nothing
            new = [(row, paraphrase) for row, (text, paraphrase) in
                   enumerate(zip(texts, self.augment.cached_paraphrases(texts), strict=True))
                   if paraphrase.strip() and paraphrase.strip() != text.strip()]
            extra = self.encode(([p for _, p in new], [labels[r] for r, _ in new], [ids[r] for r, _ in new])) \
                if new else []
        augmented = AugmentedRows(items, [(text.split(), None) for text in texts], self._edited_item, self.augment,
                                  self.seed, extra=extra)
        self._datasets["train"] = augmented
        rank_zero_info(f"augment: {len(items):,} training rows + {len(items) * self.augment.copies:,} edited + "
                       f"{len(extra):,} paraphrases = {len(augmented):,} per epoch")

    def _edited_item(self, row: int, words: list[str], tags: None) -> dict[str, Any]:
        """Training row ``row`` with its words edited, encoded as the training items are (its label kept)."""
        _, labels, ids = self.splits["train"]
        return self.encode(([" ".join(words)], [labels[row]], [ids[row]]))[0]

    def encode(self, split: Split) -> list[dict[str, Any]]:
        """A split's items: token ids and mask (cut at ``max_length``), the text, ``meta`` and, if known, the label."""
        texts, labels, ids = split
        items = text_items(self.tokenizer, texts, ids, self.max_length)
        for item, label in zip(items, labels or [None] * len(items), strict=True):
            if label is not None:  # predict files may come without labels
                item["labels"] = label
                item["meta"]["gold_label"] = self.label_names[label]
        return items

    def text_rows(self, texts: list[str]) -> list[dict[str, Any]]:
        return [{self.text_column: text} for text in texts]

    def predict_items(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return self.encode(self._examples(rows_table(rows, "predict rows", (self.text_column,)), labelled=False))

    def collator(self, stage: str) -> TextCollator:
        """Prediction batches also carry the raw ``text`` and ``meta`` for prediction writers."""
        return TextCollator(self.tokenizer, with_text=stage == "predict")
