"""Finance sentiment: Financial PhraseBank v1.0 (Malo et al., 2014) — negative / neutral / positive news sentences.

The label is an investor's view of a sentence's likely impact on the stock price. Three sources, one schema:

- nothing: the small sample we wrote, bundled in ``sample/`` (train/validation/test CSVs) — runs offline;
- ``data_dir``: a Financial PhraseBank folder (``sentences_<agreement>.csv``, else the original latin-1
  ``original/Sentences_<Agreement>.txt``); the dataset has no official split, so a seeded stratified 80/20 test
  split is carved (``test_fraction``) and validation is carved from the remaining 80%;
- ``hub_dataset="takala/financial_phrasebank"`` (network): ``hub_config`` defaults to ``sentences_<agreement>``.

The data are CC BY-NC-SA 3.0: non-commercial use only (see DATA_CARD.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from lightning_adapters.data import TextClassificationDataModule
from lightning_adapters.data.pack import Pack
from lightning_adapters.data.readers import Table
from lightning_adapters.errors import UserInputError

LABEL_NAMES = ["negative", "neutral", "positive"]
HUB_DATASET = "takala/financial_phrasebank"
_ORIGINAL_NAMES = {"allagree": "AllAgree", "75agree": "75Agree", "66agree": "66Agree", "50agree": "50Agree"}


def read_phrasebank_txt(path: str | Path, source: str | None = None, text_column: str = "sentence",
                        label_column: str = "label") -> Table:
    """Read an original ``sentence@label`` file: latin-1, CRLF, one example per line, split on the last ``@``.

    Sentences may contain ``@`` themselves, hence the last one. Both parts are stripped; blank lines are skipped.
    """
    path = Path(path)
    source = source or f"'{path}'"
    # Every byte is valid latin-1, so decoding never fails; the mojibake in the original (e.g. "Â") is kept as-is.
    text = path.read_text(encoding="latin-1")
    sentences, labels, lines = [], [], []
    for number, line in enumerate(text.split("\n"), 1):  # not splitlines(): latin-1 0x85 would count as a break
        line = line.rstrip("\r")
        if not line.strip():
            continue
        if "@" not in line:
            raise UserInputError(f"{source} line {number}: no '@' between sentence and label — write "
                                 "'sentence@label' on each line")
        sentence, label = line.rsplit("@", 1)
        sentences.append(sentence.strip())
        labels.append(label.strip())
        lines.append(number)
    return Table(source, {text_column: sentences, label_column: labels}, lines)


def phrasebank_files(folder: Path, options: dict[str, Any]) -> dict[str, str]:
    """The file of the chosen agreement level in a Financial PhraseBank folder: the UTF-8 CSV, else the original
    txt (no official split: test and validation are carved from it)."""
    agreement = options["agreement"]
    csv_file = folder / f"sentences_{agreement}.csv"
    txt_file = folder / "original" / f"Sentences_{_ORIGINAL_NAMES.get(agreement, agreement)}.txt"
    for candidate in (csv_file, txt_file):
        if candidate.is_file():
            return {"train_file": str(candidate)}
    raise UserInputError(f"data_dir '{folder}' holds neither {csv_file.name} nor original/{txt_file.name} — pass "
                         "the Financial PhraseBank folder")


def check_agreement(options: dict[str, Any]) -> None:
    if options["agreement"] not in _ORIGINAL_NAMES:
        raise UserInputError(f"unknown agreement '{options['agreement']}' — use one of {', '.join(_ORIGINAL_NAMES)}")
    if options["hub_dataset"] == HUB_DATASET and options["hub_config"] is None:
        options["hub_config"] = f"sentences_{options['agreement']}"


class FinanceSentimentDataModule(TextClassificationDataModule):
    """Financial PhraseBank sentiment (negative, neutral, positive); without arguments, the bundled sample."""

    pack = Pack(
        "Financial PhraseBank", layout=phrasebank_files, prepare=check_agreement,
        sample={"train_file": "train.csv", "validation_file": "validation.csv", "test_file": "test.csv"},
        defaults={"text_column": "sentence", "label_names": LABEL_NAMES, "test_fraction": 0.2},
        options={"agreement": (Literal["allagree", "75agree", "66agree", "50agree"], "allagree")},
        docs={"data_dir": "Financial PhraseBank folder (default: the bundled sample, which has its own splits).",
              "agreement": "annotator-agreement level to read: ``allagree`` (100%), ``75agree``, ``66agree``, "
                           "``50agree``.",
              "train_file": "a file instead of ``data_dir`` (.csv/.tsv/.jsonl/.parquet with ``text_column``/"
                            "``label_column`` columns, or an original ``sentence@label`` .txt file).",
              "hub_dataset": f"``{HUB_DATASET}`` for online users.",
              "hub_config": "its configuration (default: ``sentences_<agreement>``).",
              "label_names": "the label set in id order; set it for a file with other labels (e.g. bearish, "
                             "bullish).",
              "test_fraction": "share of the rows held out for test when there is no test file (0.2: an 80/20 "
                               "split)."})

    def read_table(self, path: Path, source: str) -> Table:
        if path.suffix.lower() == ".txt":  # the original Financial PhraseBank format
            return read_phrasebank_txt(path, source, self.text_column, self.label_column)
        return super().read_table(path, source)
