"""Multi-turn dialogue fine-tuning data: chat-template rendering, loss on assistant turns only, generation prompts.

Rows are either a ``messages`` list in the Hugging Face chat format (``[{"role": "user", "content": ...}, ...]``, a
JSON list or its JSON text in CSV) or a single exchange (``instruction`` column -> ``response`` column, plus an
optional ``system_prompt``). A conversation is rendered with the tokenizer's chat template (or the documented
`FALLBACK_TEMPLATE`) and cut, by rendering its prefixes, into segments: template text and user/system turns
(label -100) and each assistant reply up to and including its end-of-turn token (trained). Each segment is tokenized
on its own, so the assistant mask is exact by construction and the generation prompt (the conversation up to the
final assistant header, `add_generation_prompt=True`) is token for token the prefix the model was trained on.

Unlike the classification DataModule the tokenizer is loaded in ``__init__``: template and length checks need it, and
they must fail before Lightning creates a log folder.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from jinja2 import TemplateError
from lightning.pytorch.utilities import rank_zero_info

from lightning_adapters.backbone import load_tokenizer
from lightning_adapters.data.generation_collator import GENERATION_BATCH_KEYS, GenerationCollator
from lightning_adapters.data.loaders import SplitDataModule, row_ids
from lightning_adapters.data.readers import Table, is_missing
from lightning_adapters.data.source import read_splits, read_table
from lightning_adapters.data.splits import carve_missing_splits
from lightning_adapters.errors import UserInputError

ROLES = ("system", "user", "assistant")
# Zephyr-style turns; the tokenizer's EOS ends each turn, so generation stops where a reply ends.
FALLBACK_TEMPLATE = ("{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token"
                     " + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}")
Truncation = Literal["oldest_turns", "tokens", "none"]


@dataclass
class Dialogue:
    messages: list[dict[str, str]]
    where: str  # e.g. "train_file 'a.jsonl' line 3", for error messages
    meta: dict[str, str] = field(default_factory=dict)
    stratum: str = ""
    row_id: Any = None  # the file's ``id`` value, else the 0-based row index (kept when carved into another split)


def parse_messages(value: Any, where: str, aliases: dict[str, str]) -> list[dict[str, str]]:
    """Check one row's turns: a non-empty list of {role, content}, roles known, contents non-empty."""
    if hasattr(value, "tolist"):  # parquet list columns come back from pandas as numpy arrays
        value = value.tolist()
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise UserInputError(f"{where}: messages is not a JSON list ({err.msg}) — write a list of "
                                 "{role, content} objects") from err
        except RecursionError as err:
            raise UserInputError(f"{where}: messages nest too deeply — write a flat list of {{role, content}} "
                                 "objects") from err
    if is_missing(value) or (isinstance(value, list) and not value):
        raise UserInputError(f"{where}: empty dialogue (no turns) — give at least a user and an assistant turn")
    if not isinstance(value, list):
        raise UserInputError(f"{where}: messages must be a list of {{role, content}} objects, found "
                             f"{type(value).__name__} — fix the row")
    turns = []
    for number, turn in enumerate(value, 1):
        if not isinstance(turn, dict) or not isinstance(turn.get("role"), str) or not isinstance(turn.get("content"),
                                                                                                  str):
            raise UserInputError(f"{where} turn {number}: expected an object with string 'role' and 'content' — "
                                 "fix the row")
        role = aliases.get(turn["role"], turn["role"])
        if role not in ROLES:
            raise UserInputError(f"{where} turn {number}: role '{turn['role']}' is not known to the chat template "
                                 f"(use {', '.join(ROLES)}) — fix the row or map it with role_aliases")
        if not turn["content"].strip():
            raise UserInputError(f"{where} turn {number}: empty {role} content — fill it in or remove the turn")
        turns.append({"role": role, "content": turn["content"]})
    return turns


def check_turn_order(turns: list[dict[str, str]], where: str, needs_reply: bool) -> None:
    roles = [t["role"] for t in turns]
    first_reply = roles.index("assistant") if "assistant" in roles else len(roles)
    if "user" not in roles[:first_reply]:
        raise UserInputError(f"{where}: no user turn before the first assistant turn — start with a user turn")
    if needs_reply and roles[-1] != "assistant":
        raise UserInputError(f"{where}: the dialogue ends with a {roles[-1]} turn — labelled data must end with the "
                             "assistant reply to learn and score")
    if roles[-1] == "system":
        raise UserInputError(f"{where}: the dialogue ends with a system turn — end it with a user or assistant turn")


class DialogueDataModule(SplitDataModule):
    """Chat fine-tuning data for decoder-only models: loss on assistant turns, generation from the final turn.

    Args:
        tokenizer: backbone alias, folder or hub id whose tokenizer is used (the CLI links it from the model).
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
        seed: seed of the split and of the training-batch order.
        max_length: longest tokenized dialogue (and generation prompt).
        batch_size: training batch size.
        eval_batch_size: validation/test/predict batch size (default: ``batch_size``).
        num_workers: data-loading worker processes.
        group_by_length: training batches of rows with similar token counts (less padding, faster epochs; the
            order is still seeded, exact on resume).
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
        table = read_table(path, source)
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
    def render(self, turns: list[dict[str, str]], open_reply: bool, where: str) -> str:
        try:
            return self.tokenizer.apply_chat_template(turns, chat_template=self.template, tokenize=False,
                                                      add_generation_prompt=open_reply)
        except TemplateError as err:  # templates raise for turn orders they do not support
            raise UserInputError(f"{where}: the chat template rejects this dialogue ({err}) — fix the row or "
                                 "choose another chat_template") from err

    def segments(self, turns: list[dict[str, str]], where: str) -> tuple[list[tuple[str, bool]], int]:
        """(text, trained) pieces of the rendered dialogue, and the index of the piece that opens the final reply.

        A dialogue ending with a user turn gets the generation header appended (a prompt for predict).
        """
        full = self.render(turns, turns[-1]["role"] != "assistant", where)
        pieces, done = [], 0
        for i, turn in enumerate(turns):
            if turn["role"] != "assistant":
                continue
            start, end = self.render(turns[:i], True, where), self.render(turns[:i + 1], False, where)
            if not (full.startswith(start) and full.startswith(end) and len(start) >= done):
                raise UserInputError(f"{where}: the chat template does not render this dialogue turn by turn (an "
                                     "earlier turn changes later) — use chat_template: fallback or a Jinja string")
            reply = end[len(start):].rstrip()  # content + end-of-turn token; the newline after it is template text
            pieces += [(full[done:len(start)], False), (reply, True)]
            done = len(start) + len(reply)
        pieces.append((full[done:], False))
        return pieces, len(pieces) - 2 if turns[-1]["role"] == "assistant" else len(pieces)

    def _tokens(self, turns: list[dict[str, str]], where: str) -> tuple[list[int], list[int], int]:
        """input_ids, labels and the prompt length (tokens before the final reply) of one dialogue."""
        pieces, final = self.segments(turns, where)
        ids, labels, prompt = [], [], 0
        for index, (text, trained) in enumerate(pieces):
            if index == final:
                prompt = len(ids)
            piece = self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
            ids += piece
            labels += piece if trained else [-100] * len(piece)
        return ids, labels, prompt if final < len(pieces) else len(ids)

    def _fit(self, dialogue: Dialogue) -> tuple[list[int], list[int], int]:
        turns = dialogue.messages
        ids, labels, prompt = self._tokens(turns, dialogue.where)
        first = 1 if turns[0]["role"] == "system" else 0
        while len(ids) > self.max_length and self.truncation == "oldest_turns":
            later = [i for i in range(first + 1, len(turns)) if turns[i]["role"] == "user"]
            if not later:  # only the final exchange is left: its tokens are cut in _encode
                break
            turns = turns[:first] + turns[later[0]:]
            ids, labels, prompt = self._tokens(turns, dialogue.where)
        if len(ids) > self.max_length and self.truncation == "none":
            raise UserInputError(f"{dialogue.where}: the dialogue is {len(ids)} tokens, longer than max_length="
                                 f"{self.max_length} with truncation 'none' — raise max_length or set truncation")
        return ids, labels, prompt

    def _encode(self, dialogue: Dialogue, split: str) -> dict[str, Any]:
        ids, labels, prompt = self._fit(dialogue)
        cut = self.max_length
        if split != "predict" and all(label == -100 for label in labels[:cut]):
            raise UserInputError(f"{dialogue.where}: no assistant token is left within max_length={cut} — raise "
                                 "max_length or use truncation: oldest_turns")
        last = dialogue.messages[-1]
        return {"input_ids": ids[:cut], "labels": labels[:cut], "prompt_ids": ids[:prompt][-cut:],
                "references": last["content"].strip() if last["role"] == "assistant" else None,
                "source": next(t["content"] for t in reversed(dialogue.messages) if t["role"] == "user"),
                "meta": {"id": dialogue.row_id, **dialogue.meta}}

    # ---- batching ------------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        sizes = ", ".join(f"{split} {len(rows):,}" for split, rows in self.splits.items())
        rank_zero_info(f"data: {sizes} dialogues; chat template: "
                       f"{'fallback' if self.template == FALLBACK_TEMPLATE else 'tokenizer/custom'}")

    def collator(self, stage: str) -> GenerationCollator:
        """Right-padded loss inputs; evaluation and predict batches also left-padded prompts and the texts."""
        return GenerationCollator(self.tokenizer.pad_token_id, decoder_only=True, evaluation=stage != "train")
