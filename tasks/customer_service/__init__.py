"""Customer service: BANKING77 intent detection (Casanueva et al., 2020) — 77 fine-grained online-banking intents.

Three sources, one schema (``text`` in, an intent name such as ``card_arrival`` out):

- nothing: the small sample we wrote, bundled in ``sample/`` (train/validation/test CSVs over a subset of the
  intents, with BANKING77's intent names) — runs offline;
- ``data_dir``: a BANKING77 folder (``train.csv``, ``test.csv``, ``categories.json``); the official test split is
  kept and a seeded stratified validation split is carved from train;
- ``hub_dataset="PolyAI/banking77"`` (network).

The data are CC BY 4.0 (see DATA_CARD.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lightning_adapters.data import TextClassificationDataModule
from lightning_adapters.data.pack import Pack
from lightning_adapters.errors import UserInputError

HUB_DATASET = "PolyAI/banking77"


def banking77_files(folder: Path, options: dict[str, Any]) -> dict[str, Any]:
    """train.csv, the official test.csv and the 77 intent names of categories.json (when the folder has one)."""
    for name in ("train.csv", "test.csv"):
        if not (folder / name).is_file():
            raise UserInputError(f"data_dir '{folder}' has no {name} — pass the BANKING77 folder (train.csv, "
                                 "test.csv, categories.json)")
    files = {"train_file": str(folder / "train.csv"), "test_file": str(folder / "test.csv")}
    categories = folder / "categories.json"
    if not categories.is_file():
        return files
    try:
        names = json.loads(categories.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserInputError(f"'{categories}' is not valid JSON ({err}) — restore the list of intent names") from err
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise UserInputError(f"'{categories}' must be a JSON list of intent names — restore the original file")
    return files | {"label_names": names}


def label_column(options: dict[str, Any]) -> None:
    """BANKING77's CSV files name the intent column ``category``, its Hub copy ``label``."""
    options["label_column"] = options["label_column"] or ("label" if options["hub_dataset"] else "category")


class CustomerServiceDataModule(TextClassificationDataModule):
    """BANKING77 intent classification; without arguments, the bundled sample."""

    pack = Pack(
        "BANKING77", layout=banking77_files, prepare=label_column, defaults={"label_column": None},
        sample={"train_file": "train.csv", "validation_file": "validation.csv", "test_file": "test.csv"},
        docs={"data_dir": "BANKING77 folder (default: the bundled sample, which has its own splits).",
              "hub_dataset": f"``{HUB_DATASET}`` for online users (its label column is ``label``).",
              "label_column": "column holding the intent (default: ``category``, BANKING77's CSV column; ``label`` "
                              "with ``hub_dataset``).",
              "label_names": "the intent set in id order (default: categories.json, the hub's class names, or the "
                             "sorted training labels)."})
