"""DialogSum (Chen et al., 2021): two-party spoken dialogues -> one-paragraph third-person summaries.

Speakers are anonymised as ``#Person1#``, ``#Person2#`` and summaries refer to them that way. Two sources:

- nothing: the small sample we wrote, bundled in ``sample/`` (DialogSum's JSONL schema) — runs offline;
- ``data_dir``: a DialogSum folder (``dialogsum.train.jsonl`` or ``dialogsum.train.first4000.jsonl``,
  ``dialogsum.dev.jsonl``, ``dialogsum.test.jsonl``). Train/dev rows have one ``summary``; test rows have three
  (``summary1..3``): the loss uses ``summary1`` and ROUGE takes, per dialogue, the best of the three.

The data are CC BY-NC-SA 4.0: non-commercial use only (see DATA_CARD.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning_adapters.data import SummarizationDataModule
from lightning_adapters.data.pack import Pack
from lightning_adapters.errors import UserInputError

PROMPT = "Summarize the following dialogue.\n\n{source}\n\nSummary:"
REFERENCES = ["summary", "summary1", "summary2", "summary3"]


def dialogsum_files(folder: Path, options: dict[str, Any]) -> dict[str, str]:
    """train/validation/test files of a DialogSum folder (the full train file, else the first-4000 subset)."""
    names = {"train": ("dialogsum.train.jsonl", "dialogsum.train.first4000.jsonl"),
             "validation": ("dialogsum.dev.jsonl",), "test": ("dialogsum.test.jsonl",)}
    files = {}
    for split, candidates in names.items():
        found = next((folder / name for name in candidates if (folder / name).is_file()), None)
        if found is None:
            raise UserInputError(f"data_dir '{folder}' has no {' or '.join(candidates)} — pass the DialogSum folder")
        files[f"{split}_file"] = str(found)
    return files


class DialogSumDataModule(SummarizationDataModule):
    """DialogSum dialogue summarisation; without arguments, the bundled sample."""

    pack = Pack(
        "DialogSum", layout=dialogsum_files,
        sample={"train_file": "dialogsum.train.jsonl", "validation_file": "dialogsum.dev.jsonl",
                "test_file": "dialogsum.test.jsonl"},
        fixed={"source_column": "dialogue", "target_column": "summary", "reference_columns": REFERENCES,
               "id_column": "fname"},
        defaults={"prompt_template": PROMPT, "max_target_length": 96},
        docs={"predict_file": "dialogues to summarise (JSONL with a ``dialogue`` column); the test split when missing.",
              "max_source_length": "most dialogue tokens (DialogSum dialogues average ~190 tokens; a few exceed 512)."})
