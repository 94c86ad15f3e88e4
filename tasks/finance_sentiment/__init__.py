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
from typing import Literal

from lightning_adapters.data.classification import TextClassificationDataModule
from lightning_adapters.data.data_location import dataset_folder
from lightning_adapters.data.readers import Table
from lightning_adapters.errors import UserInputError

LABEL_NAMES = ["negative", "neutral", "positive"]
HUB_DATASET = "takala/financial_phrasebank"
SAMPLE_DIR = Path(__file__).parent / "sample"
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


def phrasebank_file(data_dir: str, agreement: str) -> str:
    """The file of one agreement level in a Financial PhraseBank folder: the UTF-8 CSV, else the original txt."""
    folder = dataset_folder(data_dir, "Financial PhraseBank", "finance_sentiment")
    csv_file = folder / f"sentences_{agreement}.csv"
    txt_file = folder / "original" / f"Sentences_{_ORIGINAL_NAMES[agreement]}.txt"
    for candidate in (csv_file, txt_file):
        if candidate.is_file():
            return str(candidate)
    raise UserInputError(f"data_dir '{data_dir}' holds neither {csv_file.name} nor original/{txt_file.name} — pass "
                         "the Financial PhraseBank folder")


class FinanceSentimentDataModule(TextClassificationDataModule):
    """Financial PhraseBank sentiment (negative, neutral, positive); without arguments, the bundled sample.

    Args:
        data_dir: Financial PhraseBank folder (default: the bundled sample, which has its own splits).
        agreement: annotator-agreement level to read: ``allagree`` (100%), ``75agree``, ``66agree``, ``50agree``.
        tokenizer: backbone whose tokenizer is used (the CLI links it from the model).
        train_file: a file instead of ``data_dir`` (.csv/.tsv/.jsonl/.parquet with ``text_column``/``label_column``
            columns, or an original ``sentence@label`` .txt file).
        validation_file: validation file; carved from the training rows when missing.
        test_file: test file; carved from the training rows when missing.
        predict_file: sentences to predict (a ``text_column`` column); the test split when missing.
        hub_dataset: ``takala/financial_phrasebank`` for online users.
        hub_config: its configuration (default: ``sentences_<agreement>``).
        text_column: column holding the sentence (default ``sentence``; the PhraseBank files use it).
        label_column: column holding the label.
        label_names: the label set in id order (default: negative, neutral, positive); set it for a file with other
            labels (e.g. bearish, bullish).
        validation_fraction: share of the rows left after the test split held out for validation.
        test_fraction: share of the rows held out for test when there is no test file (0.2: an 80/20 split).
        seed: seed of the split and of the training-batch order.
        max_length: longest tokenized input; longer ones are truncated.
        batch_size: training batch size.
        eval_batch_size: validation/test/predict batch size (default: ``batch_size``).
        num_workers: data-loading worker processes.
        group_by_length: training batches of rows with similar token counts (less padding, faster epochs; the
            order is still seeded, exact on resume).
    """

    def __init__(self, data_dir: str | None = None,
                 agreement: Literal["allagree", "75agree", "66agree", "50agree"] = "allagree",
                 tokenizer: str = "minilm", train_file: str | None = None, validation_file: str | None = None,
                 test_file: str | None = None, predict_file: str | None = None, hub_dataset: str | None = None,
                 hub_config: str | None = None, text_column: str = "sentence", label_column: str = "label",
                 label_names: list[str] | None = None, validation_fraction: float = 0.1, test_fraction: float = 0.2,
                 seed: int = 42, max_length: int = 128, batch_size: int = 32, eval_batch_size: int | None = None,
                 num_workers: int = 0,
                 group_by_length: bool = False) -> None:
        if agreement not in _ORIGINAL_NAMES:
            raise UserInputError(f"unknown agreement '{agreement}' — use one of {', '.join(_ORIGINAL_NAMES)}")
        given = [name for name, value in (("data_dir", data_dir), ("train_file", train_file),
                                          ("hub_dataset", hub_dataset)) if value is not None]
        if len(given) > 1:
            raise UserInputError(f"pass only one of {' and '.join(given)} — each is a full source of training data")
        if data_dir is not None:
            train_file = phrasebank_file(data_dir, agreement)
        elif not given:  # the bundled sample: it ships its own validation and test splits
            train_file = str(SAMPLE_DIR / "train.csv")
            validation_file = validation_file or str(SAMPLE_DIR / "validation.csv")
            test_file = test_file or str(SAMPLE_DIR / "test.csv")
        if hub_dataset == HUB_DATASET and hub_config is None:
            hub_config = f"sentences_{agreement}"
        super().__init__(tokenizer=tokenizer, train_file=train_file, validation_file=validation_file,
                         test_file=test_file, predict_file=predict_file, hub_dataset=hub_dataset, hub_config=hub_config,
                         text_column=text_column, label_column=label_column, label_names=label_names or LABEL_NAMES,
                         validation_fraction=validation_fraction, test_fraction=test_fraction, seed=seed,
                         max_length=max_length, batch_size=batch_size, eval_batch_size=eval_batch_size,
                         num_workers=num_workers,
                         group_by_length=group_by_length)
        self.data_dir, self.agreement = data_dir, agreement

    def read_table(self, path: Path, source: str) -> Table:
        if path.suffix.lower() == ".txt":  # the original Financial PhraseBank format
            return read_phrasebank_txt(path, source, self.text_column, self.label_column)
        return super().read_table(path, source)
