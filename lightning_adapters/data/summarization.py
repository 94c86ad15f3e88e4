"""Source -> target text data (summarisation) from JSONL/CSV/TSV/parquet files or the Hub, in the generation batch
contract of `lightning_adapters.heads.generation`.

Encoding (prompt template, decoder-only vs encoder-decoder, source truncation on character offsets):
`lightning_adapters.data.seq2seq_encoding`. ``max_source_length`` bounds the *source* tokens (the template, the
target and special tokens come on top); targets longer than ``max_target_length`` tokens are cut (the EOS stays).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_info

from lightning_adapters.backbone import load_tokenizer
from lightning_adapters.data.generation_collator import GENERATION_BATCH_KEYS, GenerationCollator
from lightning_adapters.data.loaders import ID_COLUMN, SplitDataModule, row_ids
from lightning_adapters.data.readers import Table, is_missing, rows_table
from lightning_adapters.data.seq2seq_encoding import (
    Truncation,
    check_template,
    decoder_only_backbone,
    encode_example,
    truncate_source,
)
from lightning_adapters.data.source import hub_tables, read_splits, read_table
from lightning_adapters.data.splits import carve_missing_splits
from lightning_adapters.errors import UserInputError


class SummarizationDataModule(SplitDataModule):
    """Source -> target generation data (summaries, headlines, bullet points, ...).

    Args:
        tokenizer: backbone alias, folder or hub id whose tokenizer is used (the CLI links it from the model); it is
            loaded in ``__init__``, so that every check (including source lengths) runs before Lightning writes.
        train_file: training file (.jsonl/.json lines, .csv, .tsv, .parquet).
        validation_file: validation file; carved from the training rows when missing.
        test_file: test file; carved from the training rows when missing.
        predict_file: sources to generate for (targets optional); the test split when missing.
        source_column: column holding the input text.
        target_column: column holding the target text (the training target).
        reference_columns: columns holding evaluation references (several: ROUGE takes the best one); a split
            without ``target_column`` trains its loss on the first of them. Default: ``[target_column]``.
        id_column: column holding each row's id, copied into its prediction row as ``id`` (and under its own name).
            Default: an ``id`` column when the file has one, else the 0-based row index in the file.
        prompt_template: text around the source, with a ``{source}`` field (default: ``"{source}\\n\\nSummary:"``
            for decoders, ``"summarize: {source}"`` for encoder-decoders).
        chat_template: decoder-only: wrap the filled template as a user turn in the tokenizer's chat template.
        max_source_length: most source tokens per example.
        max_target_length: most target tokens per example (EOS included).
        truncation: ``head``, ``tail``, ``head_tail`` or ``none`` (longer sources are an error).
        validation_fraction: share of the training rows (after the test split) held out when there is no validation
            file.
        test_fraction: share of the training rows held out when there is no test file.
        max_rows: use only the first N training rows (quick runs, CPU benchmarks); None: all.
        max_eval_rows: use only the first N rows of the validation, test and predict splits; None: all.
    """

    batch_keys = GENERATION_BATCH_KEYS

    def __init__(self, tokenizer: str = "smollm2", train_file: str | None = None, validation_file: str | None = None,
                 test_file: str | None = None, predict_file: str | None = None, hub_dataset: str | None = None,
                 hub_config: str | None = None, source_column: str = "source", target_column: str = "target",
                 reference_columns: list[str] | None = None, id_column: str | None = None,
                 prompt_template: str | None = None, chat_template: bool = False, max_source_length: int = 512,
                 max_target_length: int = 128, truncation: Truncation = "head", validation_fraction: float = 0.1,
                 test_fraction: float = 0.1, max_rows: int | None = None, max_eval_rows: int | None = None,
                 seed: int = 42, batch_size: int = 8, eval_batch_size: int | None = None,
                 num_workers: int = 0,
                 group_by_length: bool = False) -> None:
        super().__init__()
        self.keep_options(tokenizer, seed, batch_size, eval_batch_size, num_workers, group_by_length,
                          validation_fraction, test_fraction, max_source_length=(max_source_length, 1, math.inf),
                          max_target_length=(max_target_length, 2, math.inf), max_rows=(max_rows or 1, 1, math.inf),
                          max_eval_rows=(max_eval_rows or 1, 1, math.inf))
        if truncation not in ("head", "tail", "head_tail", "none"):
            raise UserInputError(f"unknown truncation '{truncation}' — use head, tail, head_tail or none")
        if prompt_template is not None:
            check_template(prompt_template)
        self.source_column, self.target_column = source_column, target_column
        self.reference_columns = list(reference_columns) if reference_columns else [target_column]
        self.id_column, self.prompt_template, self.chat_template = id_column, prompt_template, chat_template
        self.max_source_length, self.max_target_length = max_source_length, max_target_length
        self.truncation, self.max_rows, self.max_eval_rows = truncation, max_rows, max_eval_rows
        self.label_names = None  # generation has no label set
        files = {"train": train_file, "validation": validation_file, "test": test_file, "predict": predict_file}
        tables = read_splits(files, lambda path, source, split: self.read_table(path, source),
                             hub_tables(hub_dataset, hub_config)[0] if hub_dataset else None,
                             nothing="no data — pass train_file (and/or validation/test/predict files) or hub_dataset")
        self.splits = {split: self.examples(table, split) for split, table in tables.items()}
        carve_missing_splits(self.splits, {"test": test_fraction, "validation": validation_fraction}, seed)
        # The tokenizer is needed now: length checks (truncation 'none') must fail before Lightning writes anything.
        self.tokenizer = load_tokenizer(tokenizer)
        self.decoder_only = decoder_only_backbone(tokenizer)
        if chat_template and self.decoder_only and not getattr(self.tokenizer, "chat_template", None):
            raise UserInputError(f"chat_template is on but the tokenizer of '{tokenizer}' has no chat template — set "
                                 "chat_template: false (plain prompt_template) or use an instruction-tuned model")
        default = "{source}\n\nSummary:" if self.decoder_only else "summarize: {source}"
        self.template = prompt_template or default
        self._datasets = {split: [self.encode(row) for row in rows] for split, rows in self.splits.items()}

    # ---- reading and checking (all in __init__) ----------------------------------------------------------------
    def read_table(self, path: Path, source: str) -> Table:
        """Read one local file by its extension; packs override this to add formats."""
        return read_table(path, source)

    def examples(self, table: Table, split: str) -> list[dict[str, Any]]:
        """Checked rows: ``source``, ``target`` (None when predicting without one), ``references``, ``meta``."""
        limit = self.max_rows if split == "train" else self.max_eval_rows
        count = len(table.lines) if limit is None else min(limit, len(table.lines))
        sources = table.column(self.source_column, "source_column")
        ref_columns = [c for c in self.reference_columns if c in table.columns]
        target_column = self.target_column if self.target_column in table.columns else (ref_columns or [None])[0]
        if target_column is None and split != "predict":
            table.column(self.target_column, "target_column")  # raises: names the columns there are
        if self.id_column:
            table.column(self.id_column, "id_column")  # raises when the named column is missing
        ids = row_ids(table.columns, count, self.id_column)
        rows = []
        for row in range(count):
            source = self._text(table, row, self.source_column, sources[row])
            target = self._text(table, row, target_column, table.columns[target_column][row]) if target_column else None
            references = [self._text(table, row, c, table.columns[c][row]) for c in ref_columns
                          if not is_missing(table.columns[c][row])] or ([target] if target is not None else [])
            meta = {"id": ids[row]}
            if self.id_column and self.id_column != ID_COLUMN:  # rows written before `id` existed had only this
                meta[self.id_column] = ids[row]
            rows.append({"source": source, "target": target, "where": table.where(row), "meta": meta,
                         "references": references[0] if len(references) == 1 else (references or None)})
        return rows

    @staticmethod
    def _text(table: Table, row: int, column: str, value: Any) -> str:
        text = "" if is_missing(value) else str(value).strip()
        if not text:
            raise UserInputError(f"{table.where(row)}: empty text in column '{column}' — fill it in or remove the row")
        return text

    # ---- tokenizing and batching -------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if not self.splits:  # built to encode in-memory rows (`for_rows`): no split to report
            return
        sizes = ", ".join(f"{split} {len(rows):,}" for split, rows in self.splits.items())
        rank_zero_info(f"data: {sizes} rows")

    def encode(self, row: dict[str, Any]) -> dict[str, Any]:
        source = truncate_source(row["source"], self.tokenizer, self.max_source_length, self.truncation, row["where"])
        prompt = self.template.format(source=source)
        if self.decoder_only and self.chat_template:
            prompt = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                        add_generation_prompt=True)
        item = encode_example(self.tokenizer, prompt, row["target"], self.max_target_length, self.decoder_only,
                              special_tokens=not (self.decoder_only and self.chat_template))
        item.update(source=row["source"], references=row["references"], meta=row["meta"])
        return item

    def text_rows(self, texts: list[str]) -> list[dict[str, Any]]:
        return [{self.source_column: text} for text in texts]

    def predict_items(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        table = rows_table(rows, "predict rows", (self.source_column,))
        return [self.encode(row) for row in self.examples(table, "predict")]

    def collator(self, stage: str) -> GenerationCollator:
        return GenerationCollator(self.tokenizer.pad_token_id, self.decoder_only, evaluation=stage != "train")
