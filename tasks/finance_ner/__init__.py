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
from typing import Literal

from lightning_adapters.data.data_location import dataset_folder
from lightning_adapters.data.token_classification import TokenClassificationDataModule
from lightning_adapters.errors import UserInputError

LABEL_NAMES = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
SAMPLE_DIR = Path(__file__).parent / "sample"


def split_files(data_dir: str | Path) -> tuple[str, str | None, str]:
    """(train, validation or None, test) files of a finance NER folder."""
    folder = dataset_folder(data_dir, "the finance NER dataset", "finance_ner")
    for train, validation, test in (("FIN5.txt", None, "FIN3.txt"), ("train.txt", "valid.txt", "test.txt"),
                                    ("train.txt", "validation.txt", "test.txt")):
        if (folder / train).is_file() and (folder / test).is_file():
            held = folder / validation if validation else None
            return str(folder / train), str(held) if held and held.is_file() else None, str(folder / test)
    raise UserInputError(f"data_dir '{data_dir}' holds neither FIN5.txt + FIN3.txt nor train.txt + test.txt — pass "
                         "the folder with the CoNLL files")


class FinanceNerDataModule(TokenClassificationDataModule):
    """Finance NER in CoNLL format (PER, ORG, LOC, MISC); without arguments, the bundled sample.

    Args:
        data_dir: folder with ``FIN5.txt``/``FIN3.txt`` (or ``train.txt``/``test.txt``); default: the bundled sample.
        tokenizer: backbone whose tokenizer is used (the CLI links it from the model).
        predict_file: sentences to tag (CoNLL format, first column read); the test split when missing.
        hub_dataset: a Hub copy of the data (network).
        hub_config: its configuration, if any.
        tags_field: the Hub copy's tag column.
        scheme: tagging scheme of the files (``auto`` reads IOB1, IOB2 and IO).
        label_names: the tag set in id order (default: CoNLL-2003's 9 tags); needed in the Hub copy's id order when
            its tags are integers without class names.
        label_subwords: which sub-words of a word carry its label: ``first``, ``last`` or ``all``.
        validation_fraction: share of the training documents (``-DOCSTART-`` sections; else sentences) held out for
            validation when there is no validation file.
        seed: seed of the validation split and of the training-batch order.
        max_length: longest tokenized sentence; words past it count as predicted ``O``.
        batch_size: training batch size.
        eval_batch_size: validation/test/predict batch size (default: ``batch_size``).
        num_workers: data-loading worker processes.
        group_by_length: training batches of rows with similar token counts (less padding, faster epochs; the
            order is still seeded, exact on resume).
    """

    def __init__(self, data_dir: str | None = None, tokenizer: str = "minilm", predict_file: str | None = None,
                 hub_dataset: str | None = None, hub_config: str | None = None, tags_field: str = "ner_tags",
                 scheme: Literal["auto", "IOB1", "IOB2", "IO"] = "auto", label_names: list[str] | None = None,
                 label_subwords: Literal["first", "last", "all"] = "first", validation_fraction: float = 0.1,
                 seed: int = 42, max_length: int = 256, batch_size: int = 32, eval_batch_size: int | None = None,
                 num_workers: int = 0,
                 group_by_length: bool = False) -> None:
        if data_dir is not None and hub_dataset is not None:
            raise UserInputError("pass only one of data_dir and hub_dataset — each is a full source of the data")
        files: tuple[str | None, str | None, str | None] = (None, None, None)
        if hub_dataset is None:
            files = split_files(data_dir) if data_dir is not None else tuple(
                str(SAMPLE_DIR / f"{split}.txt") for split in ("train", "validation", "test"))
        super().__init__(tokenizer=tokenizer, train_file=files[0], validation_file=files[1], test_file=files[2],
                         predict_file=predict_file, hub_dataset=hub_dataset, hub_config=hub_config,
                         tags_field=tags_field, tag_column=-1, scheme=scheme, label_names=label_names or LABEL_NAMES,
                         label_subwords=label_subwords, validation_fraction=validation_fraction, seed=seed,
                         max_length=max_length, batch_size=batch_size, eval_batch_size=eval_batch_size,
                         num_workers=num_workers,
                         group_by_length=group_by_length)
        self.data_dir = data_dir
