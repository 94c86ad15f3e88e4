"""The ``README.md`` model card written into every adapter folder (Hugging Face style: YAML front matter, then text).

It says what the folder holds — base model, strategy and its arguments, task head, label names, trainable parameter
count — and, when the caller knows them (the CLI, a user), the data, license, metrics and the command that trained
it. Values come from configs and user data: they are quoted in the front matter and flattened in the table, so no
label name can break the card's structure.
"""

from __future__ import annotations

import json
from typing import Any

from lightning_adapters.backbone import count_parameters
from lightning_adapters.errors import UserInputError

CARD_NAME = "README.md"
CARD_FIELDS = ("data", "license", "metrics", "command")
# head class (or a base class of it) -> Hugging Face task tag
_TASKS = {"ClassificationHead": "text-classification", "TokenClassificationHead": "token-classification",
          "QuestionAnsweringHead": "question-answering", "GenerationHead": "text-generation"}


def model_card(module: Any, base_model: str, strategy: dict, card: dict | None = None,
               library: str = "lightning-adapters") -> str:
    """The card's Markdown text.

    Args:
        module: the `AdapterModule` being saved.
        base_model: the base model name the folder records (an alias such as ``minilm``, a hub id or a path).
        strategy: the saved strategy config (``class_path``, ``init_args``).
        card: optional fields: ``data``, ``license``, ``command`` (strings), ``metrics`` (name -> value).
        library: the front matter's ``library_name`` (``peft`` for PEFT folders).
    """
    card = _checked(card)
    head = module.head
    task = next((_TASKS[c.__name__] for c in type(head).__mro__ if c.__name__ in _TASKS), None)
    strategy_name = strategy["class_path"].rpartition(".")[2]
    tags = ["lightning-adapters", strategy_name.lower()] + ([task] if task else [])
    front = [f"library_name: {library}", f"base_model: {json.dumps(base_model)}"]
    front += [f"license: {json.dumps(card['license'])}"] if "license" in card else []
    front += ["tags:"] + [f"- {json.dumps(tag)}" for tag in tags]
    trainable, total = count_parameters(module)
    rows = [("Base model", f"`{base_model}` ({module.backbone.config.model_type})"),
            ("Strategy", f"`{strategy_name}` ({_args(strategy.get('init_args', {}))})"),
            ("Task head", f"`{type(head).__name__}` ({_args(head.hparams()['init_args'])})"),
            ("Labels", ", ".join(module.label_names) if module.label_names else "none (generative or span task)"),
            ("Trainable parameters", f"{trainable:,} of {total:,} ({100 * trainable / max(total, 1):.4f}%)")]
    rows += [(field.capitalize(), card[field]) for field in ("data", "license") if field in card]
    if "metrics" in card:
        rows.append(("Metrics", ", ".join(f"{name}: {value}" for name, value in card["metrics"].items())))
    if "command" in card:
        rows.append(("Command", f"`{card['command']}`"))
    table = ["| | |", "|---|---|"] + [f"| {name} | {_cell(value)} |" for name, value in rows]
    return "\n".join(["---", *front, "---", "", f"# {strategy_name} adapter for `{base_model}`", "", *table, "",
                      *_usage(library), ""])


def _checked(card: Any) -> dict:
    if card is None:
        return {}
    if not isinstance(card, dict) or set(card) - set(CARD_FIELDS):
        raise UserInputError(f"card must be a dict with fields among {', '.join(CARD_FIELDS)}, got {card!r:.80}")
    for field, value in card.items():
        ok = isinstance(value, dict) if field == "metrics" else isinstance(value, str)
        if not ok:
            kind = "a dict of metric name -> value" if field == "metrics" else "a string"
            raise UserInputError(f"card field '{field}' must be {kind}, got {type(value).__name__}")
    return card


def _args(init_args: dict) -> str:
    return ", ".join(f"{key}={json.dumps(value, default=str)}" for key, value in init_args.items()) or "defaults"


def _cell(value: Any) -> str:
    """One table cell: no line break or pipe from user text may end the row."""
    return " ".join(str(value).split()).replace("|", "\\|")


def _usage(library: str) -> list[str]:
    if library == "peft":
        return ["Load with PEFT: `PeftModel.from_pretrained(AutoModel.from_pretrained(base_model), folder)`, or with "
                "lightning-adapters: `lightning_adapters.peft_export.load_peft(folder, base_model, label_names)`."]
    return ["Load with `lightning_adapters.load_adapter(folder)` (it checks the base model's fingerprint, the label "
            "names and every weight)."]
