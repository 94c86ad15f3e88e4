"""Customer-support replies: answer a customer's request as a support agent would (Bitext customer-support data).

Each row is one exchange, ``instruction`` (the customer's message) -> ``response`` (the agent's reply), with the
request's ``intent`` (27, e.g. ``cancel_order``) and ``category`` (11, e.g. ``ORDER``) kept for analysis: they are
copied into every prediction row. Two sources, one schema (Bitext's columns):

- nothing: the small sample we wrote, bundled in ``sample/`` (train/validation/test CSVs, 8 of Bitext's intents) —
  runs offline;
- ``data_dir``: the Bitext folder holding ``Bitext_Sample_Customer_Support_Training_Dataset.csv`` (4,514 rows, no
  official split): seeded test and validation splits are carved from it, each keeping every intent's share.

The data are CDLA-Sharing-1.0 (see DATA_CARD.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning_adapters.data import DialogueDataModule
from lightning_adapters.data.pack import Pack
from lightning_adapters.errors import UserInputError

BITEXT_FILE = "Bitext_Sample_Customer_Support_Training_Dataset.csv"
SAMPLE_DIR = Path(__file__).parent / "sample"
SYSTEM_PROMPT = ("You are a customer support assistant for an online shop. Answer the customer's request helpfully "
                 "and politely, step by step where it helps.")


def bitext_file(folder: Path, options: dict[str, Any]) -> dict[str, str]:
    path = folder / BITEXT_FILE
    if not path.is_file():
        raise UserInputError(f"data_dir '{folder}' has no {BITEXT_FILE} — pass the Bitext customer-support folder")
    return {"train_file": str(path)}


class CustomerSupportRepliesDataModule(DialogueDataModule):
    """Bitext customer-support replies as chat fine-tuning data; without arguments, the bundled sample."""

    pack = Pack(
        "the Bitext customer-support dataset", layout=bitext_file,
        sample={"train_file": "train.csv", "validation_file": "validation.csv", "test_file": "test.csv"},
        fixed={"instruction_column": "instruction", "response_column": "response",
               "meta_columns": ["intent", "category"], "stratify_column": "intent"},
        defaults={"system_prompt": SYSTEM_PROMPT, "max_length": 384},
        docs={"data_dir": "Bitext folder (default: the bundled sample, which has its own splits).",
              "train_file": "a file instead of ``data_dir`` (Bitext's columns: ``instruction``, ``response``, "
                            "``intent``, ``category``).",
              "system_prompt": "system message put before every request (null: none; SmolLM2's template then adds "
                               "its own).",
              "max_length": "longest tokenized exchange (system prompt, request and reply)."})
