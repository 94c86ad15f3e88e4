"""ECTSum (Mukherjee et al., 2022): earnings-call transcripts -> short bullet-point summaries (finance).

Transcripts are long (validation split: 3,740 SmolLM2 tokens on average, up to 11,553) — far beyond a small model's
useful context on CPU — while the reference bullets (one per line, lower-cased, the company written ``compname``;
85 tokens on average) are numeric facts: earnings per share, revenue, guidance. Long inputs are handled in two
documented, configurable steps:

1. ``sentence_filter``: ``numeric`` (default) keeps only the transcript sentences (one per line) that contain a
   digit, in their original order — the bullets restate reported figures, so this drops greetings, safe-harbour text
   and Q&A chatter first (the ECTSum paper's extract-then-paraphrase idea, as a transparent rule; on the validation
   split it keeps 2,001 tokens on average, up to 5,045); a transcript with no such sentence is kept whole. ``none``
   keeps every sentence.
2. ``truncation`` of what is left to ``max_source_length`` tokens: ``head`` (default), ``tail``, ``head_tail``, or
   ``none`` to refuse longer inputs with an error naming the row (see `lightning_adapters.data.summarization`).

Sources: nothing -> the small fictional sample we wrote in ``sample/`` (ECTSum's JSONL schema: ``id``,
``transcript``, ``summary``); ``data_dir`` -> an ECTSum folder with ``ectsum_test.jsonl``, ``ectsum_val.jsonl`` and, if
present, ``ectsum_train.jsonl``. Without a train file the model trains on the validation calls (with a seeded
``validation_fraction`` held out for validation) and is tested on the test calls.

The repository is GPL-3.0 (no separate data licence is stated); see DATA_CARD.md.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from lightning_adapters.data import SummarizationDataModule
from lightning_adapters.data.pack import Pack
from lightning_adapters.errors import UserInputError

PROMPT = "Summarize the key financial results of this earnings call as short bullet points.\n\n{source}\n\nSummary:"
_DIGIT = re.compile(r"\d")


def numeric_sentences(transcript: str) -> str:
    """The lines of ``transcript`` that contain a digit, in order; the whole transcript if there is none."""
    kept = [line for line in transcript.split("\n") if _DIGIT.search(line)]
    return "\n".join(kept) if kept else transcript


def ectsum_files(folder: Path, options: dict[str, Any]) -> dict[str, str]:
    """Train/validation/test files; without ectsum_train.jsonl, training on the validation calls."""
    if not (folder / "ectsum_test.jsonl").is_file() or not (folder / "ectsum_val.jsonl").is_file():
        raise UserInputError(f"data_dir '{folder}' has no ectsum_val.jsonl and ectsum_test.jsonl — pass the "
                             "ECTSum folder")
    if (folder / "ectsum_train.jsonl").is_file():
        return {"train_file": str(folder / "ectsum_train.jsonl"), "validation_file": str(folder / "ectsum_val.jsonl"),
                "test_file": str(folder / "ectsum_test.jsonl")}
    return {"train_file": str(folder / "ectsum_val.jsonl"), "test_file": str(folder / "ectsum_test.jsonl")}


def check_sentence_filter(options: dict[str, Any]) -> None:
    if options["sentence_filter"] not in ("numeric", "none"):
        raise UserInputError(f"unknown sentence_filter '{options['sentence_filter']}' — use numeric or none")


class ECTSumDataModule(SummarizationDataModule):
    """ECTSum earnings-call bullet summaries; without arguments, the bundled sample."""

    pack = Pack(
        "ECTSum", layout=ectsum_files, prepare=check_sentence_filter,
        sample={"train_file": "ectsum_train.jsonl", "validation_file": "ectsum_val.jsonl",
                "test_file": "ectsum_test.jsonl"},
        fixed={"source_column": "transcript", "target_column": "summary", "id_column": "id", "test_fraction": 0},
        defaults={"prompt_template": PROMPT, "max_source_length": 1024, "batch_size": 2},
        options={"sentence_filter": (Literal["numeric", "none"], "numeric")},
        docs={"sentence_filter": "``numeric`` keeps only sentences with a digit before truncation; ``none`` keeps all.",
              "predict_file": "transcripts to summarise (JSONL with a ``transcript`` column); the test split when "
                              "missing.",
              "max_source_length": "most transcript tokens after the sentence filter.",
              "validation_fraction": "share of the training calls held out for validation when there is no "
                                     "validation file."})

    def encode(self, row: dict[str, Any]) -> dict[str, Any]:
        if self.sentence_filter == "none":
            return super().encode(row)
        item = super().encode({**row, "source": numeric_sentences(row["source"])})
        item["source"] = row["source"]  # predictions echo the transcript as given
        return item
