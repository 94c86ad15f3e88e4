"""SQuAD v1.1 extractive question answering (Rajpurkar et al., 2016) — answer a question with a span of a paragraph.

Three sources, one schema (SQuAD JSON):

- nothing: the small sample we wrote, bundled in ``sample/`` (train/validation/test JSON) — runs offline;
- ``data_dir``: a SQuAD v1.1 folder. With ``train-v1.1.json`` and ``dev-v1.1.json`` the official protocol is used
  (train for training, whole articles carved for validation, dev for test). With only ``dev-v1.1.json`` (as in
  ``shared/data/squad_v1.1``) the dev set is split by article, seeded: ``test_fraction`` of the 48 articles for
  test, ``validation_fraction`` of the rest for validation, the remainder for training — no paragraph is shared
  between splits, but the numbers are not comparable with official dev-set scores;
- ``hub_dataset="rajpurkar/squad"`` (network): its train and validation (used as test) splits.

The data are CC BY-SA 4.0 (see DATA_CARD.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning_adapters.data import QADataModule
from lightning_adapters.data.pack import Pack
from lightning_adapters.data.squad_format import QAExample
from lightning_adapters.errors import UserInputError

HUB_DATASET = "rajpurkar/squad"
SAMPLE_DIR = Path(__file__).parent / "sample"
TRAIN_NAME, DEV_NAME = "train-v1.1.json", "dev-v1.1.json"


def squad_files(folder: Path, options: dict[str, Any]) -> dict[str, str]:
    """The training file and, next to train-v1.1.json, the official dev set as the test file."""
    train, dev = folder / TRAIN_NAME, folder / DEV_NAME
    if train.is_file():
        return {"train_file": str(train)} | ({"test_file": str(dev)} if dev.is_file() else {})
    if dev.is_file():
        return {"train_file": str(dev)}
    raise UserInputError(f"data_dir '{folder}' holds neither {TRAIN_NAME} nor {DEV_NAME} — pass the SQuAD v1.1 "
                         "folder")


def hub_test_split(options: dict[str, Any]) -> None:
    """The Hub's "validation" split is SQuAD's official dev set, used as the test split (`SquadDataModule.read_hub`):
    nothing is carved for test."""
    if options["hub_dataset"] is not None:
        options["test_fraction"] = 0


class SquadDataModule(QADataModule):
    """SQuAD v1.1 (article-disjoint splits of whatever files are present); without arguments, the bundled sample."""

    pack = Pack(
        "SQuAD v1.1", layout=squad_files, prepare=hub_test_split, defaults={"test_fraction": 0.2},
        sample={"train_file": "train.json", "validation_file": "validation.json", "test_file": "test.json"},
        docs={"data_dir": "SQuAD v1.1 folder (default: the bundled sample, which has its own splits).",
              "train_file": "a SQuAD JSON file instead of ``data_dir``.",
              "hub_dataset": f"``{HUB_DATASET}`` for online users (its validation split becomes the test split).",
              "test_fraction": "share of the articles held out for test when there is no test file."})

    def read_hub(self, name: str, config: str | None) -> dict[str, tuple[str, list[QAExample]]]:
        splits = super().read_hub(name, config)
        if "test" not in splits and "validation" in splits:  # validate on articles carved from the training ones
            splits["test"] = splits.pop("validation")
        return splits
