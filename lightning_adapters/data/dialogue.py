"""Multi-turn dialogue fine-tuning data: chat-template rendering, loss on assistant turns only, generation prompts.

Rows are either a ``messages`` list in the Hugging Face chat format (``[{"role": "user", "content": ...}, ...]``, a
JSON list or its JSON text in CSV) or a single exchange (``instruction`` column -> ``response`` column, plus an
optional ``system_prompt``), checked by `lightning_adapters.data.chat_format`; rendering and the assistant-only loss
mask: `lightning_adapters.data.chat_encoding`.

Unlike the classification DataModule the tokenizer is loaded in ``__init__``: template and length checks need it, and
they must fail before Lightning creates a log folder.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_info

from lightning_adapters.backbone import load_tokenizer
from lightning_adapters.data.chat_encoding import ChatEncoder
from lightning_adapters.data.chat_format import (
    FALLBACK_TEMPLATE,
    ROLES,
    Dialogue,
    Truncation,
    check_turn_order,
    parse_messages,
)
from lightning_adapters.data.generation_collator import GENERATION_BATCH_KEYS, GenerationCollator
from lightning_adapters.data.loaders import SplitDataModule, row_ids
from lightning_adapters.data.readers import Table, is_missing, rows_table
from lightning_adapters.data.source import read_splits, read_table
from lightning_adapters.data.splits import carve_missing_splits
from lightning_adapters.errors import UserInputError


class DialogueDataModule(SplitDataModule):
    """Chat fine-tuning data for decoder-only models: loss on assistant turns, generation from the final turn.

    Args:
        train_file: training file (.jsonl/.json lines, .csv, .tsv, .parquet).
        validation_file: validation file; carved from the training rows when missing.
        test_file: test file; carved from the training rows when missing.
        predict_file: dialogues to answer; the last turn may be a user turn (no reference). The test split when
            missing. Prediction rows hold ``id`` (the file's ``id`` column, else the 0-based row index).
        messages_column: column holding the turn list; when a file lacks it, rows are single exchanges read from
            ``instruction_column`` and ``response_column``.
        instruction_column: the user's message of a single-exchange row.
        response_column: the assistant's reply of a single-exchange row (optional in predict files).
        system_prompt: system message put first in every dialogue that has none.
        role_aliases: other role names mapped onto system/user/assistant, e.g. ``{human: user, gpt: assistant}``.
        meta_columns: columns kept per row and copied into predictions (e.g. ``[intent, category]``).
        stratify_column: column whose value shares are kept when validation/test splits are carved.
        chat_template: ``auto`` (the tokenizer's template, else the fallback), ``tokenizer`` (required),
            ``fallback`` (`FALLBACK_TEMPLATE`: ``<|role|>`` line, content, EOS) or a Jinja template string.
        truncation: dialogues longer than ``max_length``: ``oldest_turns`` drops the oldest turns (never a system
            turn or the final exchange), then cuts tokens; ``tokens`` cuts tokens (training text on the right,
            prompts on the left); ``none`` stops with an error naming the row.
        validation_fraction: share of the training rows (after the test split) held out for validation when missing.
        test_fraction: share of the training rows held out for test when missing.
        max_length: longest tokenized dialogue (and generation prompt).
    """

    batch_keys = GENERATION_BATCH_KEYS

    def __init__(self, tokenizer: str = "smollm2", train_file: str | None = None, validation_file: str | None = None,
                 test_file: str | None = None, predict_file: str | None = None, messages_column: str = "messages",
                 instruction_column: str = "instruction", response_column: str = "response",
                 system_prompt: str | None = None, role_aliases: dict[str, str] | None = None,
                 meta_columns: list[str] | None = None, stratify_column: str | None = None,
                 chat_template: str = "auto", truncation: Truncation = "oldest_turns",
                 validation_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 42, max_length: int = 512,
                 batch_size: int = 8, eval_batch_size: int | None = None, num_workers: int = 0,
                 group_by_length: bool = False) -> None:
        super().__init__()
        self.keep_options(tokenizer, seed, batch_size, eval_batch_size, num_workers, group_by_length,
                          validation_fraction, test_fraction, max_length=(max_length, 2, math.inf))
        if truncation not in Truncation.__args__:
            raise UserInputError(f"truncation='{truncation}' is unknown — use one of {', '.join(Truncation.__args__)}")
        aliases = dict(role_aliases or {})
        if bad := {k: v for k, v in aliases.items() if v not in ROLES}:
            raise UserInputError(f"role_aliases {bad} map onto unknown roles — map onto {', '.join(ROLES)}")
        self.label_names = None  # no label set: the CLI links None to the model
        self.messages_column, self.instruction_column, self.response_column = (messages_column, instruction_column,
                                                                                response_column)
        self.system_prompt, self.role_aliases, self.meta_columns = system_prompt, aliases, list(meta_columns or [])
        self.stratify_column, self.truncation, self.max_length = stratify_column, truncation, max_length
        files = {"train": train_file, "validation": validation_file, "test": test_file, "predict": predict_file}
        self.splits: dict[str, list[Dialogue]] = read_splits(
            files, self._read, nothing="no dialogue data — pass train_file (or validation/test/predict files)")
        carve_missing_splits(self.splits, {"test": test_fraction, "validation": validation_fraction}, seed,
                             keys=lambda rows: [d.stratum for d in rows])
        self.tokenizer = load_tokenizer(tokenizer)
        self.template = self._template(chat_template)
        self._datasets = {split: [self._encode(d, split) for d in rows] for split, rows in self.splits.items()}

    # ---- reading and checking -------------------------------------------------------------------------------
    def _read(self, path: Path, source: str, split: str) -> list[Dialogue]:
        return self._dialogues(read_table(path, source), split)

    def _dialogues(self, table: Table, split: str) -> list[Dialogue]:
        ids = row_ids(table.columns, len(table.lines))
        return [self._dialogue(table, row, split, ids[row]) for row in range(len(table.lines))]

    def _dialogue(self, table: Table, row: int, split: str, row_id: Any = None) -> Dialogue:
        where, columns = table.where(row), table.columns
        if self.messages_column in columns:
            turns = parse_messages(columns[self.messages_column][row], where, self.role_aliases)
        elif self.instruction_column in columns:
            pairs = [("user", self.instruction_column), ("assistant", self.response_column)]
            if split == "predict" and self.response_column not in columns:  # requests to answer, no reference
                pairs = pairs[:1]
            turns = [{"role": role, "content": table.column(column, "response_column")[row]} for role, column in pairs]
            turns = parse_messages([{k: "" if is_missing(v) else str(v) for k, v in t.items()} for t in turns],
                                   where, {})
        else:
            raise UserInputError(f"{table.source} has neither a '{self.messages_column}' nor an "
                                 f"'{self.instruction_column}' column (columns: {', '.join(columns)}) — set "
                                 "messages_column or instruction_column/response_column")
        if self.system_prompt and turns[0]["role"] != "system":
            turns.insert(0, {"role": "system", "content": self.system_prompt})
        check_turn_order(turns, where, needs_reply=split != "predict")
        # Predict files may lack the analysis columns; labelled files must have them.
        meta = {c: "" if is_missing(v := table.column(c, "meta_columns")[row]) else str(v)
                for c in self.meta_columns if split != "predict" or c in columns}
        stratum = str(table.column(self.stratify_column, "stratify_column")[row]) if (
            self.stratify_column and split == "train") else ""
        return Dialogue(turns, where, meta, stratum, row_id)

    def _template(self, choice: str) -> str:
        own = getattr(self.tokenizer, "chat_template", None)
        if isinstance(own, dict):  # several named templates (e.g. "tool_use"): chats use the default one
            own = own.get("default")
        if choice == "tokenizer" and not own:
            raise UserInputError(f"the tokenizer of '{self.tokenizer_name}' has no chat template — set chat_template "
                                 "to auto, fallback or a Jinja template string")
        if choice in ("auto", "tokenizer"):
            return own or FALLBACK_TEMPLATE
        return FALLBACK_TEMPLATE if choice == "fallback" else choice

    # ---- rendering, masking, truncation ---------------------------------------------------------------------
    def _encode(self, dialogue: Dialogue, split: str) -> dict[str, Any]:
        return ChatEncoder(self.tokenizer, self.template, self.max_length, self.truncation).encode(dialogue, split)

    # ---- batching ------------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if not self.splits:  # built to encode in-memory rows (`for_rows`): no split to report
            return
        sizes = ", ".join(f"{split} {len(rows):,}" for split, rows in self.splits.items())
        rank_zero_info(f"data: {sizes} dialogues; chat template: "
                       f"{'fallback' if self.template == FALLBACK_TEMPLATE else 'tokenizer/custom'}")

    def text_rows(self, texts: list[str]) -> list[dict[str, Any]]:
        return [{self.instruction_column: text} for text in texts]

    def predict_items(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Rows of a ``messages`` list or an ``instruction`` (the user's request), as a predict file's rows."""
        return [self._encode(dialogue, "predict") for dialogue in self._dialogues(rows_table(rows, "predict rows"),
                                                                                   "predict")]

    def collator(self, stage: str) -> GenerationCollator:
        """Right-padded loss inputs; evaluation and predict batches also left-padded prompts and the texts."""
        return GenerationCollator(self.tokenizer.pad_token_id, decoder_only=True, evaluation=stage != "train")
