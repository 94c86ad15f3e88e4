"""Chat rows: turns in the Hugging Face chat format (``[{"role": "user", "content": ...}, ...]``), checked one by one.

A row's ``messages`` is a list of ``{role, content}`` objects (or its JSON text, as in a CSV cell); roles are system,
user and assistant (others mapped by ``role_aliases``); every content is non-empty; a user turn comes before the
first assistant turn, and labelled rows end with the assistant's reply.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from lightning_adapters.data.readers import is_missing
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
