"""CoNLL-2003 English NER (Tjong Kim Sang & De Meulder, 2003): PER, ORG, LOC, MISC in Reuters newswire.

Three sources, one schema (the 9 IOB2 tags of `LABEL_NAMES`, in the Hugging Face ``conll2003`` id order):

- nothing: the small sample we wrote, bundled in ``sample/`` (train/validation/test) — runs offline;
- ``data_dir``: a folder with the original ``eng.train`` / ``eng.testa`` (validation) / ``eng.testb`` (test) files,
  or ``train.txt`` / ``valid.txt`` / ``test.txt`` (a common redistribution); IOB1 (the original) and IOB2 both read;
- ``hub_dataset`` (network), e.g. ``eriktks/conll2003``: tokens and ClassLabel ``ner_tags``.

The Reuters text is for research use only (see DATA_CARD.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from lightning_adapters.data.data_location import dataset_folder
from lightning_adapters.data.token_classification import TokenClassificationDataModule
from lightning_adapters.errors import UserInputError

LABEL_NAMES = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
SAMPLE_DIR = Path(__file__).parent / "sample"
_LAYOUTS = (("eng.train", "eng.testa", "eng.testb"), ("train.txt", "valid.txt", "test.txt"),
            ("train.txt", "validation.txt", "test.txt"))


def split_files(data_dir: str | Path) -> tuple[str, str, str]:
    """(train, validation, test) files of a CoNLL-2003 folder: the first layout of `_LAYOUTS` it holds in full."""
    folder = dataset_folder(data_dir, "CoNLL-2003", "conll2003")
    for layout in _LAYOUTS:
        if all((folder / name).is_file() for name in layout):
            return tuple(str(folder / name) for name in layout)
    raise UserInputError(f"data_dir '{data_dir}' holds none of the CoNLL-2003 layouts "
                         f"({'; '.join(', '.join(layout) for layout in _LAYOUTS)}) — pass the folder with the files")


class Conll2003DataModule(TokenClassificationDataModule):
    """CoNLL-2003 English NER; without arguments, the bundled sample.

    Args:
        data_dir: CoNLL-2003 folder (``eng.train``/``eng.testa``/``eng.testb``); default: the bundled sample.
        tokenizer: backbone whose tokenizer is used (the CLI links it from the model).
        predict_file: sentences to tag (CoNLL format, first column read); the test split when missing.
        hub_dataset: a Hub copy of CoNLL-2003 (network), e.g. ``eriktks/conll2003``.
        hub_config: its configuration, if any.
        scheme: tagging scheme of the files (``auto`` reads the original IOB1 and the common IOB2 copies).
        label_subwords: which sub-words of a word carry its label: ``first``, ``last`` or ``all``.
        seed: seed of the training-batch order.
        max_length: longest tokenized sentence (CoNLL-2003's longest is 124 words, 164 MiniLM tokens).
        batch_size: training batch size.
        eval_batch_size: validation/test/predict batch size (default: ``batch_size``).
        num_workers: data-loading worker processes.
        group_by_length: training batches of rows with similar token counts (less padding, faster epochs; the
            order is still seeded, exact on resume).
    """

    def __init__(self, data_dir: str | None = None, tokenizer: str = "minilm", predict_file: str | None = None,
                 hub_dataset: str | None = None, hub_config: str | None = None,
                 scheme: Literal["auto", "IOB1", "IOB2", "IO"] = "auto",
                 label_subwords: Literal["first", "last", "all"] = "first", seed: int = 42, max_length: int = 256,
                 batch_size: int = 32, eval_batch_size: int | None = None, num_workers: int = 0,
                 group_by_length: bool = False) -> None:
        if data_dir is not None and hub_dataset is not None:
            raise UserInputError("pass only one of data_dir and hub_dataset — each is a full source of the data")
        files = (None, None, None)
        if hub_dataset is None:
            files = split_files(data_dir) if data_dir is not None else tuple(
                str(SAMPLE_DIR / f"{split}.txt") for split in ("train", "validation", "test"))
        super().__init__(tokenizer=tokenizer, train_file=files[0], validation_file=files[1], test_file=files[2],
                         predict_file=predict_file, hub_dataset=hub_dataset, hub_config=hub_config, tag_column=-1,
                         scheme=scheme, label_names=LABEL_NAMES, label_subwords=label_subwords, validation_fraction=0,
                         seed=seed, max_length=max_length, batch_size=batch_size, eval_batch_size=eval_batch_size,
                         num_workers=num_workers,
                         group_by_length=group_by_length)
        self.data_dir = data_dir
