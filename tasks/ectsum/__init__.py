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

from lightning_adapters.data.data_location import dataset_folder
from lightning_adapters.data.summarization import SummarizationDataModule, Truncation
from lightning_adapters.errors import UserInputError

SAMPLE_DIR = Path(__file__).parent / "sample"
PROMPT = "Summarize the key financial results of this earnings call as short bullet points.\n\n{source}\n\nSummary:"
_DIGIT = re.compile(r"\d")


def numeric_sentences(transcript: str) -> str:
    """The lines of ``transcript`` that contain a digit, in order; the whole transcript if there is none."""
    kept = [line for line in transcript.split("\n") if _DIGIT.search(line)]
    return "\n".join(kept) if kept else transcript


def ectsum_files(data_dir: str) -> dict[str, str]:
    folder = dataset_folder(data_dir, "ECTSum", "ectsum")
    if not (folder / "ectsum_test.jsonl").is_file() or not (folder / "ectsum_val.jsonl").is_file():
        raise UserInputError(f"data_dir '{data_dir}' has no ectsum_val.jsonl and ectsum_test.jsonl — pass the "
                             "ECTSum folder")
    if (folder / "ectsum_train.jsonl").is_file():
        return {"train": str(folder / "ectsum_train.jsonl"), "validation": str(folder / "ectsum_val.jsonl"),
                "test": str(folder / "ectsum_test.jsonl")}
    return {"train": str(folder / "ectsum_val.jsonl"), "test": str(folder / "ectsum_test.jsonl")}


class ECTSumDataModule(SummarizationDataModule):
    """ECTSum earnings-call bullet summaries; without arguments, the bundled sample.

    Args:
        data_dir: ECTSum folder (default: the bundled sample).
        tokenizer: backbone whose tokenizer is used (the CLI links it from the model).
        predict_file: transcripts to summarise (JSONL with a ``transcript`` column); the test split when missing.
        sentence_filter: ``numeric`` keeps only sentences with a digit before truncation; ``none`` keeps all.
        prompt_template: text around the transcript, with a ``{source}`` field.
        chat_template: decoder-only: wrap the prompt as a user turn in the tokenizer's chat template.
        max_source_length: most transcript tokens after the sentence filter.
        max_target_length: most summary tokens (EOS included).
        truncation: ``head``, ``tail``, ``head_tail`` or ``none`` (longer transcripts are an error).
        validation_fraction: share of the training calls held out for validation when there is no train file.
        max_rows: use only the first N training rows; None: all.
        max_eval_rows: use only the first N validation/test/predict rows; None: all.
        seed: seed of the held-out split and of the training-batch order.
        batch_size: training batch size.
        eval_batch_size: validation/test/predict batch size (default: ``batch_size``).
        num_workers: data-loading worker processes.
        group_by_length: training batches of rows with similar token counts (less padding, faster epochs; the
            order is still seeded, exact on resume).
    """

    def __init__(self, data_dir: str | None = None, tokenizer: str = "smollm2", predict_file: str | None = None,
                 sentence_filter: Literal["numeric", "none"] = "numeric", prompt_template: str = PROMPT,
                 chat_template: bool = False, max_source_length: int = 1024, max_target_length: int = 128,
                 truncation: Truncation = "head", validation_fraction: float = 0.1, max_rows: int | None = None,
                 max_eval_rows: int | None = None, seed: int = 42, batch_size: int = 2,
                 eval_batch_size: int | None = None, num_workers: int = 0,
                 group_by_length: bool = False) -> None:
        if sentence_filter not in ("numeric", "none"):
            raise UserInputError(f"unknown sentence_filter '{sentence_filter}' — use numeric or none")
        self.sentence_filter, self.data_dir = sentence_filter, data_dir
        files = ectsum_files(data_dir) if data_dir is not None else {
            split: str(SAMPLE_DIR / f"ectsum_{name}.jsonl")
            for split, name in (("train", "train"), ("validation", "val"), ("test", "test"))}
        super().__init__(tokenizer=tokenizer, train_file=files["train"], validation_file=files.get("validation"),
                         test_file=files["test"], predict_file=predict_file, source_column="transcript",
                         target_column="summary", id_column="id", prompt_template=prompt_template,
                         chat_template=chat_template, max_source_length=max_source_length,
                         max_target_length=max_target_length, truncation=truncation,
                         validation_fraction=validation_fraction, test_fraction=0, max_rows=max_rows,
                         max_eval_rows=max_eval_rows, seed=seed, batch_size=batch_size,
                         eval_batch_size=eval_batch_size, num_workers=num_workers,
                         group_by_length=group_by_length)

    def encode(self, row: dict[str, Any]) -> dict[str, Any]:
        if self.sentence_filter == "none":
            return super().encode(row)
        item = super().encode({**row, "source": numeric_sentences(row["source"])})
        item["source"] = row["source"]  # predictions echo the transcript as given
        return item
