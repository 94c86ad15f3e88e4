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
from typing import Any

from lightning_adapters.data import TokenClassificationDataModule
from lightning_adapters.data.pack import Pack
from lightning_adapters.errors import UserInputError

LABEL_NAMES = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
_LAYOUTS = (("eng.train", "eng.testa", "eng.testb"), ("train.txt", "valid.txt", "test.txt"),
            ("train.txt", "validation.txt", "test.txt"))


def split_files(folder: Path, options: dict[str, Any]) -> dict[str, str]:
    """train/validation/test files of a CoNLL-2003 folder: the first layout of `_LAYOUTS` it holds in full."""
    for layout in _LAYOUTS:
        if all((folder / name).is_file() for name in layout):
            return {f"{split}_file": str(folder / name) for split, name in zip(("train", "validation", "test"), layout,
                                                                                strict=True)}
    raise UserInputError(f"data_dir '{folder}' holds none of the CoNLL-2003 layouts "
                         f"({'; '.join(', '.join(layout) for layout in _LAYOUTS)}) — pass the folder with the files")


class Conll2003DataModule(TokenClassificationDataModule):
    """CoNLL-2003 English NER; without arguments, the bundled sample."""

    pack = Pack(
        "CoNLL-2003", layout=split_files,
        sample={"train_file": "train.txt", "validation_file": "validation.txt", "test_file": "test.txt"},
        fixed={"tag_column": -1, "label_names": LABEL_NAMES, "validation_fraction": 0},
        docs={"data_dir": "CoNLL-2003 folder (``eng.train``/``eng.testa``/``eng.testb``); default: the bundled sample.",
              "hub_dataset": "a Hub copy of CoNLL-2003 (network), e.g. ``eriktks/conll2003``.",
              "scheme": "tagging scheme of the files (``auto`` reads the original IOB1 and the common IOB2 copies).",
              "max_length": "longest tokenized sentence (CoNLL-2003's longest is 124 words, 164 MiniLM tokens)."})
