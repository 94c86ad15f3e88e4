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

from lightning_adapters.data.classification import TextClassificationDataModule
from lightning_adapters.data.data_location import dataset_folder
from lightning_adapters.errors import UserInputError

HUB_DATASET = "PolyAI/banking77"
SAMPLE_DIR = Path(__file__).parent / "sample"


def banking77_files(data_dir: str) -> tuple[str, str, list[str] | None]:
    """(train.csv, test.csv, the 77 intent names of categories.json, or None when the folder has no such file)."""
    folder = dataset_folder(data_dir, "BANKING77", "customer_service")
    for name in ("train.csv", "test.csv"):
        if not (folder / name).is_file():
            raise UserInputError(f"data_dir '{data_dir}' has no {name} — pass the BANKING77 folder (train.csv, "
                                 "test.csv, categories.json)")
    categories = folder / "categories.json"
    if not categories.is_file():
        return str(folder / "train.csv"), str(folder / "test.csv"), None
    try:
        names = json.loads(categories.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserInputError(f"'{categories}' is not valid JSON ({err}) — restore the list of intent names") from err
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise UserInputError(f"'{categories}' must be a JSON list of intent names — restore the original file")
    return str(folder / "train.csv"), str(folder / "test.csv"), names


class CustomerServiceDataModule(TextClassificationDataModule):
    """BANKING77 intent classification; without arguments, the bundled sample.

    Args:
        data_dir: BANKING77 folder (default: the bundled sample, which has its own splits).
        tokenizer: backbone whose tokenizer is used (the CLI links it from the model).
        train_file: a file instead of ``data_dir`` (.csv/.tsv/.jsonl/.parquet with ``text_column``/``label_column``
            columns).
        validation_file: validation file; carved from the training rows when missing.
        test_file: test file; carved from the training rows when missing.
        predict_file: queries to predict (a ``text_column`` column); the test split when missing.
        hub_dataset: ``PolyAI/banking77`` for online users (its label column is ``label``).
        hub_config: configuration of ``hub_dataset``, if it has several.
        text_column: column holding the query.
        label_column: column holding the intent (default: ``category``, BANKING77's CSV column; ``label`` with
            ``hub_dataset``).
        label_names: the intent set in id order (default: categories.json, the hub's class names, or the sorted
            training labels).
        validation_fraction: share of the training rows held out for validation when there is no validation file.
        test_fraction: share of the training rows held out for test when there is no test file.
        seed: seed of the split and of the training-batch order.
        max_length: longest tokenized input; longer ones are truncated.
        batch_size: training batch size.
        eval_batch_size: validation/test/predict batch size (default: ``batch_size``).
        num_workers: data-loading worker processes.
        group_by_length: training batches of rows with similar token counts (less padding, faster epochs; the
            order is still seeded, exact on resume).
    """

    def __init__(self, data_dir: str | None = None, tokenizer: str = "minilm", train_file: str | None = None,
                 validation_file: str | None = None, test_file: str | None = None, predict_file: str | None = None,
                 hub_dataset: str | None = None, hub_config: str | None = None, text_column: str = "text",
                 label_column: str | None = None, label_names: list[str] | None = None,
                 validation_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 42, max_length: int = 128,
                 batch_size: int = 32, eval_batch_size: int | None = None, num_workers: int = 0,
                 group_by_length: bool = False) -> None:
        given = [name for name, value in (("data_dir", data_dir), ("train_file", train_file),
                                          ("hub_dataset", hub_dataset)) if value is not None]
        if len(given) > 1:
            raise UserInputError(f"pass only one of {' and '.join(given)} — each is a full source of training data")
        if data_dir is not None:
            train_file, official_test, categories = banking77_files(data_dir)
            test_file = test_file or official_test
            label_names = label_names or categories
        elif not given:  # the bundled sample: it ships its own validation and test splits
            train_file = str(SAMPLE_DIR / "train.csv")
            validation_file = validation_file or str(SAMPLE_DIR / "validation.csv")
            test_file = test_file or str(SAMPLE_DIR / "test.csv")
        super().__init__(tokenizer=tokenizer, train_file=train_file, validation_file=validation_file,
                         test_file=test_file, predict_file=predict_file, hub_dataset=hub_dataset, hub_config=hub_config,
                         text_column=text_column,
                         label_column=label_column or ("label" if hub_dataset else "category"),
                         label_names=label_names, validation_fraction=validation_fraction,
                         test_fraction=test_fraction, seed=seed, max_length=max_length, batch_size=batch_size,
                         eval_batch_size=eval_batch_size, num_workers=num_workers,
                         group_by_length=group_by_length)
        self.data_dir = data_dir
