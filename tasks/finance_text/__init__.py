"""Finance text for domain adapters: earnings-call transcript sentences, unlabelled, for masked or causal LM.

A finance *domain* adapter (`lightning_adapters.LanguageModelingHead`) trains on these sentences; a task adapter
(Financial PhraseBank sentiment, finance NER) then starts from it (``init_from``) or is stacked on it. Sources:

- nothing: the small fictional sample we wrote, bundled in ``sample/`` (ECTSum's JSONL schema: training and
  validation calls) — runs offline;
- ``data_dir``: an ECTSum folder; the domain corpus is every sentence (one per transcript line) of
  ``ectsum_test.jsonl`` (495 calls) and, as validation, of ``ectsum_val.jsonl`` (249 calls), or ``ectsum_train.jsonl``
  when present. ``max_train_texts`` / ``max_validation_texts`` keep seeded samples (the full test file is ~60,000
  sentences; validation on all 30,000 validation sentences would cost more than a training epoch on CPU).

Sentences under ``min_words`` words (5: "Thank you.", "Next question, please.") are left out. The transcripts are
ECTSum's (GPL-3.0 repository, no separate data licence); see DATA_CARD.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning_adapters.data.pack import Pack
from lightning_adapters.data.text_corpus import TextCorpusDataModule
from lightning_adapters.errors import UserInputError


def transcript_files(folder: Path, options: dict[str, Any]) -> dict[str, str]:
    """The training transcripts (the official train split when present, else the test split) and the validation
    split's."""
    train = next((folder / name for name in ("ectsum_train.jsonl", "ectsum_test.jsonl") if (folder / name).is_file()),
                 None)
    if train is None or not (folder / "ectsum_val.jsonl").is_file():
        raise UserInputError(f"data_dir '{folder}' has no ectsum_test.jsonl and ectsum_val.jsonl — pass the ECTSum "
                             "folder")
    return {"train_file": str(train), "validation_file": str(folder / "ectsum_val.jsonl")}


class FinanceTextDataModule(TextCorpusDataModule):
    """Earnings-call sentences for a finance domain adapter; without arguments, the bundled sample."""

    pack = Pack(
        "ECTSum", layout=transcript_files,
        sample={"train_file": "transcripts.jsonl", "validation_file": "validation.jsonl"},
        fixed={"text_column": "transcript", "lines": True},
        defaults={"min_words": 5, "max_length": 64},
        docs={"train_file": "transcripts (JSONL with a ``transcript`` column, one sentence per line).",
              "validation_file": "validation transcripts; carved from the training transcripts (whole calls) when "
                                 "missing."})
