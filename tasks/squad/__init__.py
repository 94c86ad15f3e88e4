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

from lightning_adapters.data.data_location import dataset_folder
from lightning_adapters.data.question_answering import QADataModule
from lightning_adapters.errors import UserInputError

HUB_DATASET = "rajpurkar/squad"
SAMPLE_DIR = Path(__file__).parent / "sample"
TRAIN_NAME, DEV_NAME = "train-v1.1.json", "dev-v1.1.json"


def squad_files(data_dir: str) -> tuple[str, str | None]:
    """(training file, test file or None) of a SQuAD v1.1 folder."""
    folder = dataset_folder(data_dir, "SQuAD v1.1", "squad")
    train, dev = folder / TRAIN_NAME, folder / DEV_NAME
    if train.is_file():
        return str(train), str(dev) if dev.is_file() else None
    if dev.is_file():
        return str(dev), None
    raise UserInputError(f"data_dir '{data_dir}' holds neither {TRAIN_NAME} nor {DEV_NAME} — pass the SQuAD v1.1 "
                         "folder")


class SquadDataModule(QADataModule):
    """SQuAD v1.1 (article-disjoint splits of whatever files are present); without arguments, the bundled sample.

    Args:
        data_dir: SQuAD v1.1 folder (default: the bundled sample, which has its own splits).
        tokenizer: backbone whose (fast) tokenizer is used (the CLI links it from the model).
        train_file: a SQuAD JSON file instead of ``data_dir``.
        validation_file: validation file; carved from the training articles when missing.
        test_file: test file; carved from the training articles when missing.
        predict_file: SQuAD JSON questions to answer (answers optional); the test split when missing.
        hub_dataset: ``rajpurkar/squad`` for online users (its validation split becomes the test split).
        validation_fraction: share of the training articles (after the test split) held out for validation.
        test_fraction: share of the articles held out for test when there is no test file.
        seed: seed of the article split and of the training-batch order.
        max_length: tokens per window (question + context + special tokens).
        stride: tokens shared by consecutive windows of a long context.
        batch_size: training batch size, in windows.
        eval_batch_size: validation/test/predict batch size, in questions (default: ``batch_size``).
        num_workers: data-loading worker processes.
        group_by_length: training batches of rows with similar token counts (less padding, faster epochs; the
            order is still seeded, exact on resume).
    """

    def __init__(self, data_dir: str | None = None, tokenizer: str = "minilm", train_file: str | None = None,
                 validation_file: str | None = None, test_file: str | None = None, predict_file: str | None = None,
                 hub_dataset: str | None = None, validation_fraction: float = 0.1, test_fraction: float = 0.2,
                 seed: int = 42, max_length: int = 384, stride: int = 128, batch_size: int = 16,
                 eval_batch_size: int | None = None, num_workers: int = 0,
                 group_by_length: bool = False) -> None:
        given = [name for name, value in (("data_dir", data_dir), ("train_file", train_file),
                                          ("hub_dataset", hub_dataset)) if value is not None]
        if len(given) > 1:
            raise UserInputError(f"pass only one of {' and '.join(given)} — each is a full source of training data")
        if data_dir is not None:
            train_file, dev = squad_files(data_dir)
            test_file = test_file or dev
        elif not given:  # the bundled sample: it ships its own validation and test splits
            train_file = str(SAMPLE_DIR / "train.json")
            validation_file = validation_file or str(SAMPLE_DIR / "validation.json")
            test_file = test_file or str(SAMPLE_DIR / "test.json")
        super().__init__(tokenizer=tokenizer, train_file=train_file, validation_file=validation_file,
                         test_file=test_file, predict_file=predict_file, hub_dataset=hub_dataset,
                         validation_fraction=validation_fraction, test_fraction=0 if hub_dataset else test_fraction,
                         seed=seed, max_length=max_length, stride=stride, batch_size=batch_size,
                         eval_batch_size=eval_batch_size, num_workers=num_workers,
                         group_by_length=group_by_length)
        self.data_dir = data_dir
        if hub_dataset is not None and "test" not in self.splits and "validation" in self.splits:
            # SQuAD's hub "validation" is the official dev set: test on it, validate on carved training articles.
            self.splits["test"], self.sources["test"] = self.splits.pop("validation"), self.sources.pop("validation")
            self._carve_articles(validation_fraction, 0)
