"""Rendering a dialogue with a chat template and encoding it: loss on assistant turns only, generation prompts.

A conversation is rendered with the chat template and cut, by rendering its prefixes, into segments: template text
and user/system turns (label -100) and each assistant reply up to and including its end-of-turn token (trained).
Each segment is tokenized on its own, so the assistant mask is exact by construction and the generation prompt (the
conversation up to the final assistant header, `add_generation_prompt=True`) is token for token the prefix the model
was trained on. Dialogues longer than ``max_length``: ``oldest_turns`` drops the oldest turns (never a system turn or
the final exchange), then cuts tokens; ``tokens`` cuts tokens; ``none`` stops with an error naming the row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jinja2 import TemplateError

from lightning_adapters.data.chat_format import Dialogue
from lightning_adapters.errors import UserInputError


@dataclass
class ChatEncoder:
    """Token ids, labels and prompt of each dialogue, by ``template`` (a Jinja chat template) and ``tokenizer``."""

    tokenizer: Any
    template: str
    max_length: int
    truncation: str

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

    def tokens(self, turns: list[dict[str, str]], where: str) -> tuple[list[int], list[int], int]:
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

    def fit(self, dialogue: Dialogue) -> tuple[list[int], list[int], int]:
        turns = dialogue.messages
        ids, labels, prompt = self.tokens(turns, dialogue.where)
        first = 1 if turns[0]["role"] == "system" else 0
        while len(ids) > self.max_length and self.truncation == "oldest_turns":
            later = [i for i in range(first + 1, len(turns)) if turns[i]["role"] == "user"]
            if not later:  # only the final exchange is left: its tokens are cut in _encode
                break
            turns = turns[:first] + turns[later[0]:]
            ids, labels, prompt = self.tokens(turns, dialogue.where)
        if len(ids) > self.max_length and self.truncation == "none":
            raise UserInputError(f"{dialogue.where}: the dialogue is {len(ids)} tokens, longer than max_length="
                                 f"{self.max_length} with truncation 'none' — raise max_length or set truncation")
        return ids, labels, prompt

    def encode(self, dialogue: Dialogue, split: str) -> dict[str, Any]:
        ids, labels, prompt = self.fit(dialogue)
        cut = self.max_length
        if split != "predict" and all(label == -100 for label in labels[:cut]):
            raise UserInputError(f"{dialogue.where}: no assistant token is left within max_length={cut} — raise "
                                 "max_length or use truncation: oldest_turns")
        last = dialogue.messages[-1]
        return {"input_ids": ids[:cut], "labels": labels[:cut], "prompt_ids": ids[:prompt][-cut:],
                "references": last["content"].strip() if last["role"] == "assistant" else None,
                "source": next(t["content"] for t in reversed(dialogue.messages) if t["role"] == "user"),
                "meta": {"id": dialogue.row_id, **dialogue.meta}}
