"""Raw text for language modelling (`lightning_adapters.heads.LanguageModelingHead`): a domain adapter's corpus.

Each text is one example, cut at ``max_length`` tokens (HF's ``run_mlm --line_by_line``): a domain's sentences stay
whole, and a row's score in prediction is the score of that text. Sources are the usual split files — tables
(CSV/TSV/JSONL/parquet, ``text_column``) or ``.txt`` files (one text per non-blank line) — or a Hub dataset.
``lines`` makes each line of a cell its own text (ECTSum's transcripts hold one sentence per line). Texts shorter than
``min_words`` words are dropped (an earnings call's "Thank you." teaches little); ``max_train_texts`` and
``max_validation_texts`` keep seeded samples. A missing validation split is carved from the training texts.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch.utilities import rank_zero_info

from lightning_adapters.backbone import load_tokenizer, resolve
from lightning_adapters.data.classification import TextCollator, text_items
from lightning_adapters.data.lengths import count_truncated, fit_max_length
from lightning_adapters.data.loaders import SplitDataModule, row_ids
from lightning_adapters.data.readers import READERS, Table, column_texts, rows_table
from lightning_adapters.data.source import existing_file, hub_tables, read_splits, read_table
from lightning_adapters.data.splits import carve_missing_splits
from lightning_adapters.errors import UserInputError
from lightning_adapters.selection import select_texts

Texts = tuple[list[str], list[Any]]  # texts, and where each came from (row id, or [row id, line] with ``lines``)


def read_text_lines(path: Path, source: str, column: str = "text") -> Table:
    """A ``.txt`` file: one text per non-blank line, in column ``column``."""
    try:
        lines = path.read_text(encoding="utf-8-sig").split("\n")
    except UnicodeDecodeError as err:
        raise UserInputError(f"{source} is not UTF-8 ({err.reason} at byte {err.start}) — save it as UTF-8") from err
    kept = [(number, line.strip()) for number, line in enumerate(lines, 1) if line.strip()]
    if not kept:
        raise UserInputError(f"{source} is empty (no non-blank lines) — pass a file with one text per line")
    return Table(source, {column: [text for _, text in kept]}, [number for number, _ in kept])


def text_readers(column: str) -> dict:
    """The table readers by extension, plus ``.txt``: one text per non-blank line, in column ``column``."""
    return {**READERS, ".txt": lambda path, source: read_text_lines(path, source, column)}


def cell_lines(text: str) -> list[tuple[int, str]]:
    """The non-blank lines of a cell, stripped, each with its number within the cell (from 1)."""
    return [(number, line.strip()) for number, line in enumerate(text.split("\n"), 1) if line.strip()]


def _source_rows(split: Texts) -> list[Any]:
    """The row each text came from: with ``lines``, validation is carved by whole rows (transcripts), so no row has
    sentences on both sides (a call's boilerplate would flatter the validation perplexity)."""
    return [str(i[0]) if isinstance(i, list) else 0 for i in split[1]]


def _texts_of(split: Texts, rows: list[int]) -> Texts:
    texts, ids = split
    return [texts[r] for r in rows], [ids[r] for r in rows]


class TextCorpusDataModule(SplitDataModule):
    """Unlabelled text, one example per text, for masked or causal language modelling.

    Args:
        train_file: training texts: a table (.csv, .tsv, .jsonl/.json lines, .parquet) or .txt (one text per line).
        validation_file: validation texts; carved from the training texts when missing.
        test_file: test texts (optional).
        predict_file: texts to score (each row's mean token loss); the test split when missing.
        text_column: column holding the text (tables; a .txt file's lines are read as this column).
        lines: each line of a cell is a text of its own (e.g. transcripts with one sentence per line).
        min_words: texts with fewer whitespace-separated words are dropped.
        max_train_texts: keep a seeded sample of at most this many training texts (after the validation split is
            carved); default: all.
        max_validation_texts: keep a seeded sample of at most this many validation texts; default: all.
        select_near: a file of the target task's texts (a table or .txt): the training texts become the
            ``select_size`` of them nearest to these (`lightning_adapters.selection`: the frozen backbone's
            mean-pooled embeddings, each target's nearest neighbours in turn), before the validation split is
            carved; the backbone is the ``tokenizer``'s. ``lightning-adapters select`` does the same to a file.
        select_column: the column of ``select_near`` holding the texts (a .txt file's lines are read as it).
        select_size: how many training texts ``select_near`` keeps.
        validation_fraction: share of the training texts held out for validation when there is no validation_file.
        test_fraction: share of the training texts held out for test when there is no test_file (default none).
        max_length: longest tokenized text; longer ones are cut (setup logs how many).
    """

    batch_keys = {"input_ids": "token ids", "attention_mask": "token mask", "text": "row texts", "meta": "row meta"}
    carved_splits = ("validation", "test")

    def __init__(self, tokenizer: str = "minilm", train_file: str | None = None, validation_file: str | None = None,
                 test_file: str | None = None, predict_file: str | None = None, hub_dataset: str | None = None,
                 hub_config: str | None = None, text_column: str = "text", lines: bool = False, min_words: int = 1,
                 max_train_texts: int | None = None, max_validation_texts: int | None = None,
                 select_near: str | None = None, select_column: str = "text", select_size: int | None = None,
                 validation_fraction: float = 0.05, test_fraction: float = 0.0,
                 seed: int = 42, max_length: int = 128, batch_size: int = 32, eval_batch_size: int | None = None,
                 num_workers: int = 0, group_by_length: bool = False) -> None:
        super().__init__()
        self.keep_options(tokenizer, seed, batch_size, eval_batch_size, num_workers, group_by_length,
                          validation_fraction, test_fraction, max_length=(max_length, 2, math.inf),
                          min_words=(min_words, 0, math.inf),
                          max_train_texts=(1 if max_train_texts is None else max_train_texts, 1, math.inf),
                          max_validation_texts=(1 if max_validation_texts is None else max_validation_texts, 1,
                                                math.inf))
        resolve(tokenizer)  # a bad local tokenizer path fails now, before any log folder exists
        self.text_column, self.lines, self.min_words = text_column, lines, min_words
        self.max_length, self.max_train_texts, self.max_validation_texts = max_length, max_train_texts, \
            max_validation_texts
        hub = hub_tables(hub_dataset, hub_config)[0] if hub_dataset else {}
        files = {"train": train_file, "validation": validation_file, "test": test_file, "predict": predict_file}
        tables = read_splits(files, lambda path, source, split: self.read_table(path, source), hub,
                             nothing="no text given — pass train_file (a table or a .txt file) or hub_dataset")
        self.splits: dict[str, Texts] = {split: self.texts(table, scored=split == "predict")
                                        for split, table in tables.items()}
        if select_size is not None and select_near is None:
            raise UserInputError("select_size needs select_near: the file of texts to keep the training texts near")
        if select_near is not None:
            self.select_training_texts(select_near, select_column, select_size)
        carve_missing_splits(self.splits, {"test": self.test_fraction, "validation": self.validation_fraction},
                             self.seed, keys=_source_rows, whole_groups=self.lines,
                             unit="training transcripts" if self.lines else "training texts", take=_texts_of)
        for split, most in (("train", max_train_texts), ("validation", max_validation_texts)):
            if most is not None and split in self.splits and len(self.splits[split][0]) > most:
                rows = np.random.default_rng(self.seed).permutation(len(self.splits[split][0]))[:most]
                self.splits[split] = _texts_of(self.splits[split], sorted(rows.tolist()))
        self.label_names = None  # language modelling has no label set
        self.tokenizer = None  # loaded in setup(): the checks above need no tokenizer
        self._datasets: dict[str, list[dict[str, Any]]] = {}
        self.truncated: dict[str, int] = {}

    def select_training_texts(self, near: str, column: str, size: int | None) -> None:
        """Keep the ``size`` training texts nearest to the texts of file ``near``, in selection order."""
        if size is None:
            raise UserInputError("select_near needs select_size: how many training texts to keep")
        if "train" not in self.splits:
            raise UserInputError("select_near picks among the training texts — pass train_file (the pool)")
        table = read_table(existing_file("select_near", near), f"select_near '{near}'", text_readers(column))
        targets = [text for text in column_texts(table, column, "select_column") if text.strip()]
        # on the CPU: every DDP rank builds the DataModule before Lightning gives it a device (one GPU would hold
        # every rank's copy); `lightning-adapters select` embeds a large pool on a GPU once
        chosen = select_texts(self.tokenizer_name, self.splits["train"][0], targets, size,
                              max_length=self.max_length, device="cpu")
        self.splits["train"] = _texts_of(self.splits["train"], chosen)

    def read_table(self, path: Path, source: str) -> Table:
        return read_table(path, source, text_readers(self.text_column))

    def texts(self, table: Table, scored: bool = False) -> Texts:
        """A table's texts (split into lines with ``lines``), without those under ``min_words`` words. ``scored``
        (texts to predict): every text is kept, so each row gets its score, and a blank one is refused."""
        texts, ids = [], []
        for row, (text, row_id) in enumerate(zip(column_texts(table, self.text_column, "text_column"),
                                                 row_ids(table.columns, len(table.lines)), strict=True)):
            if scored and not text.strip():
                raise UserInputError(f"{table.where(row)}: empty text in column '{self.text_column}' — fill it in or "
                                     "remove the row")
            parts = [(line, [row_id, n]) for n, line in cell_lines(text)] if self.lines and not scored \
                else [(text.strip(), row_id)]
            for part, part_id in parts:
                if scored or (part and len(part.split()) >= self.min_words):
                    texts.append(part)
                    ids.append(part_id)
        if not texts:
            raise UserInputError(f"{table.source} holds no text of at least {self.min_words} words in column "
                                 f"'{self.text_column}' — check text_column and min_words")
        return texts, ids

    # ---- tokenizing and batching -------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(self.tokenizer_name)
            self.max_length = fit_max_length(self.max_length, self.tokenizer_name, self.tokenizer)
        for split, texts in self.splits.items():
            if split not in self._datasets:
                items = self._datasets[split] = self.encode(texts)
                self.truncated[split] = count_truncated(self.tokenizer, texts[0], [i["input_ids"] for i in items],
                                                        self.max_length)
        if self.splits:
            sizes = ", ".join(f"{split} {len(texts[0]):,}" for split, texts in self.splits.items())
            cut = ", ".join(f"{split} {count:,}" for split, count in self.truncated.items() if count)
            rank_zero_info(f"data: {sizes} texts" + (f"; cut at max_length={self.max_length}: {cut}" if cut else ""))

    def encode(self, split: Texts) -> list[dict[str, Any]]:
        texts, ids = split
        return text_items(self.tokenizer, texts, ids, self.max_length)

    def text_rows(self, texts: list[str]) -> list[dict[str, Any]]:
        return [{self.text_column: text} for text in texts]

    def predict_items(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return self.encode(self.texts(rows_table(rows, "predict rows", (self.text_column,)), scored=True))

    def collator(self, stage: str) -> TextCollator:
        return TextCollator(self.tokenizer, with_text=stage == "predict")
