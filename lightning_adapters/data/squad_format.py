"""The SQuAD JSON format: reading and checking it, and Hub SQuAD splits converted to it.

Every problem is one `UserInputError` naming the file, the JSON path and the fix: JSON syntax (line and column), the
structure ``data[].paragraphs[].{context, qas[].{id, question, answers[].{text, answer_start}}}``, duplicate ids, and
an answer not found in its context at ``answer_start``. Each question keeps its article (``"<index>:<title>"`` of its
``data[]`` entry), so splits can be carved by whole articles.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning_adapters.errors import UserInputError


@dataclass
class QAExample:
    """One question: its context, gold answers (texts and character starts) and the article it comes from."""

    id: str
    question: str
    context: str
    answers: list[str]
    answer_starts: list[int]
    article: str


def _get(node: Any, key: str, kind: type | tuple, where: str, source: str) -> Any:
    if not isinstance(node, dict) or key not in node:
        raise UserInputError(f"{source}: {where} has no '{key}' field — write SQuAD JSON: data[].paragraphs[]."
                             "{context, qas[].{id, question, answers[].{text, answer_start}}}")
    value, kinds = node[key], kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or isinstance(value, bool):
        names = " or ".join(k.__name__ for k in kinds)
        raise UserInputError(f"{source}: {where}.{key} must be of type {names}, got {type(value).__name__} — fix it")
    return value


def _check_answer(context: str, text: str, start: int, where: str, source: str) -> None:
    if context[start:start + len(text)] == text and text.strip():
        return
    found = context.find(text) if text.strip() else -1
    hint = f"it occurs at character {found}" if found >= 0 else "the text does not occur in the context"
    raise UserInputError(f"{source}: {where}: answer span not found in its context: answer {text!r} at answer_start "
                         f"{start} does not match the context there ({hint}) — fix answer_start or the answer text")


def parse_squad(root: Any, source: str, labelled: bool = True) -> list[QAExample]:
    """Examples of a parsed SQuAD JSON document, checked; ``labelled=False`` allows questions without answers."""
    examples, seen = [], {}
    for a, article in enumerate(_get(root, "data", list, "the top level", source)):
        paragraphs = _get(article, "paragraphs", list, f"data[{a}]", source)
        title = article.get("title", "")  # articles are data[] entries; the title is only a readable name
        for p, paragraph in enumerate(paragraphs):
            where = f"data[{a}].paragraphs[{p}]"
            context = _get(paragraph, "context", str, where, source)
            if not context.strip():
                raise UserInputError(f"{source}: {where}.context is empty — give every paragraph its text")
            for q, qa in enumerate(_get(paragraph, "qas", list, where, source)):
                examples.append(_parse_question(qa, context, f"{where}.qas[{q}]", source, labelled, f"{a}:{title}"))
                if examples[-1].id in seen:
                    raise UserInputError(f"{source}: {where}.qas[{q}] repeats id '{examples[-1].id}' (first at "
                                         f"{seen[examples[-1].id]}) — give every question a unique id")
                seen[examples[-1].id] = f"{where}.qas[{q}]"
    if not examples:
        raise UserInputError(f"{source} holds no questions (empty split) — pass a file with at least one question")
    return examples


def _parse_question(qa: Any, context: str, where: str, source: str, labelled: bool, article: str) -> QAExample:
    qid = str(_get(qa, "id", (str, int), where, source))
    question = _get(qa, "question", str, where, source)
    if not question.strip():
        raise UserInputError(f"{source}: {where} (id '{qid}') has an empty question — write the question")
    raw = _get(qa, "answers", list, where, source) if labelled or "answers" in qa else []
    if labelled and not raw:
        raise UserInputError(f"{source}: {where} (id '{qid}') has no answers — extractive QA needs at least one "
                             "answer per question (unanswerable SQuAD v2 questions are not supported)")
    texts, starts = [], []
    for k, answer in enumerate(raw):
        text = _get(answer, "text", str, f"{where}.answers[{k}]", source)
        start = _get(answer, "answer_start", int, f"{where}.answers[{k}]", source)
        _check_answer(context, text, start, f"{where}.answers[{k}] (id '{qid}')", source)
        texts.append(text)
        starts.append(start)
    return QAExample(qid, question, context, texts, starts, article)


def read_squad_json(path: Path, source: str, labelled: bool = True) -> list[QAExample]:
    try:
        root = json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as err:
        raise UserInputError(f"{source} is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}) — fix "
                             "the file") from err
    except UnicodeDecodeError as err:
        raise UserInputError(f"{source} is not UTF-8 text ({err.reason}) — save it as UTF-8 JSON") from err
    except RecursionError as err:  # the parser recurses once per nesting level
        raise UserInputError(f"{source} nests too deeply to be SQuAD JSON — fix the file") from err
    return parse_squad(root, source, labelled)


def hub_rows_to_squad(rows: dict[str, list]) -> dict:
    """A Hub SQuAD split (columns id, title, context, question, answers{text, answer_start}) as SQuAD JSON."""
    data: list[dict] = []
    for qid, title, context, question, answers in zip(rows["id"], rows["title"], rows["context"], rows["question"],
                                                      rows["answers"], strict=True):
        if not data or data[-1]["title"] != title:
            data.append({"title": title, "paragraphs": []})
        paragraphs = data[-1]["paragraphs"]
        if not paragraphs or paragraphs[-1]["context"] != context:
            paragraphs.append({"context": context, "qas": []})
        pairs = zip(answers["text"], answers["answer_start"], strict=True)
        paragraphs[-1]["qas"].append({"id": qid, "question": question,
                                      "answers": [{"text": t, "answer_start": s} for t, s in pairs]})
    return {"data": data}
