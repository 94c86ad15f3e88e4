"""Finance NER: PER, ORG, LOC, MISC in financial documents, e.g. the SEC-filings set of Salinas Alvarado et al. (2015).

That dataset ("FIN") annotates loan agreements filed with the US SEC in CoNLL format with CoNLL-2003's four entity
types: ``FIN5`` (5 agreements) is the training file, ``FIN3`` (3 agreements) the test file. Sources:

- nothing: the small sample we wrote, bundled in ``sample/`` (train/validation/test) — runs offline;
- ``data_dir``: a folder with ``FIN5.txt`` (train) and ``FIN3.txt`` (test), or ``train.txt`` [``valid.txt``]
  ``test.txt``; without a validation file, a seeded ``validation_fraction`` of the training documents (whole
  ``-DOCSTART-`` sections, so no agreement is in both splits; else of the sentences) is held out;
- ``hub_dataset`` (network): a Hub copy with ``tokens`` and tag columns (set ``tags_field``; integer tags without
  class names need ``label_names`` in the copy's id order).

We could not verify the license of the original release offline (see DATA_CARD.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning_adapters.data import TokenClassificationDataModule
from lightning_adapters.data.pack import Pack
from lightning_adapters.errors import UserInputError

LABEL_NAMES = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]


def split_files(folder: Path, options: dict[str, Any]) -> dict[str, str | None]:
    """train, validation (or None) and test files of a finance NER folder."""
    for train, validation, test in (("FIN5.txt", None, "FIN3.txt"), ("train.txt", "valid.txt", "test.txt"),
                                    ("train.txt", "validation.txt", "test.txt")):
        if (folder / train).is_file() and (folder / test).is_file():
            held = folder / validation if validation else None
            return {"train_file": str(folder / train), "test_file": str(folder / test),
                    "validation_file": str(held) if held and held.is_file() else None}
    raise UserInputError(f"data_dir '{folder}' holds neither FIN5.txt + FIN3.txt nor train.txt + test.txt — pass "
                         "the folder with the CoNLL files")


class FinanceNerDataModule(TokenClassificationDataModule):
    """Finance NER in CoNLL format (PER, ORG, LOC, MISC); without arguments, the bundled sample."""

    pack = Pack(
        "the finance NER dataset", layout=split_files, fixed={"tag_column": -1}, defaults={"label_names": LABEL_NAMES},
        sample={"train_file": "train.txt", "validation_file": "validation.txt", "test_file": "test.txt"},
        docs={"data_dir": "folder with ``FIN5.txt``/``FIN3.txt`` (or ``train.txt``/``test.txt``); default: the "
                          "bundled sample.",
              "hub_dataset": "a Hub copy of the data (network).",
              "label_names": "the tag set in id order (CoNLL-2003's 9 tags); needed in the Hub copy's id order when "
                             "its tags are integers without class names."})
