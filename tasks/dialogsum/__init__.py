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

from lightning_adapters.data.data_location import dataset_folder
from lightning_adapters.data.summarization import SummarizationDataModule, Truncation
from lightning_adapters.errors import UserInputError

SAMPLE_DIR = Path(__file__).parent / "sample"
PROMPT = "Summarize the following dialogue.\n\n{source}\n\nSummary:"
REFERENCES = ["summary", "summary1", "summary2", "summary3"]


def dialogsum_files(data_dir: str) -> dict[str, str]:
    """train/validation/test files of a DialogSum folder (the full train file, else the first-4000 subset)."""
    folder = dataset_folder(data_dir, "DialogSum", "dialogsum")
    names = {"train": ("dialogsum.train.jsonl", "dialogsum.train.first4000.jsonl"),
             "validation": ("dialogsum.dev.jsonl",), "test": ("dialogsum.test.jsonl",)}
    files = {}
    for split, candidates in names.items():
        found = next((folder / name for name in candidates if (folder / name).is_file()), None)
        if found is None:
            raise UserInputError(f"data_dir '{data_dir}' has no {' or '.join(candidates)} — pass the DialogSum folder")
        files[split] = str(found)
    return files


class DialogSumDataModule(SummarizationDataModule):
    """DialogSum dialogue summarisation; without arguments, the bundled sample.

    Args:
        data_dir: DialogSum folder (default: the bundled sample).
        tokenizer: backbone whose tokenizer is used (the CLI links it from the model).
        predict_file: dialogues to summarise (JSONL with a ``dialogue`` column); the test split when missing.
        prompt_template: text around the dialogue, with a ``{source}`` field (encoder-decoders: e.g.
            ``"summarize: {source}"``).
        chat_template: decoder-only: wrap the prompt as a user turn in the tokenizer's chat template.
        max_source_length: most dialogue tokens (DialogSum dialogues average ~190 tokens; a few exceed 512).
        max_target_length: most summary tokens (EOS included).
        truncation: ``head``, ``tail``, ``head_tail`` or ``none`` (longer dialogues are an error).
        max_rows: use only the first N training rows (CPU runs); None: all.
        max_eval_rows: use only the first N validation/test/predict rows; None: all.
        seed: seed of the training-batch order.
        batch_size: training batch size.
        eval_batch_size: validation/test/predict batch size (default: ``batch_size``).
        num_workers: data-loading worker processes.
        group_by_length: training batches of rows with similar token counts (less padding, faster epochs; the
            order is still seeded, exact on resume).
    """

    def __init__(self, data_dir: str | None = None, tokenizer: str = "smollm2", predict_file: str | None = None,
                 prompt_template: str = PROMPT, chat_template: bool = False, max_source_length: int = 512,
                 max_target_length: int = 96, truncation: Truncation = "head", max_rows: int | None = None,
                 max_eval_rows: int | None = None, seed: int = 42, batch_size: int = 8,
                 eval_batch_size: int | None = None, num_workers: int = 0,
                 group_by_length: bool = False) -> None:
        files = dialogsum_files(data_dir) if data_dir is not None else {
            "train": str(SAMPLE_DIR / "dialogsum.train.jsonl"), "validation": str(SAMPLE_DIR / "dialogsum.dev.jsonl"),
            "test": str(SAMPLE_DIR / "dialogsum.test.jsonl")}
        super().__init__(tokenizer=tokenizer, train_file=files["train"], validation_file=files["validation"],
                         test_file=files["test"], predict_file=predict_file, source_column="dialogue",
                         target_column="summary", reference_columns=REFERENCES, id_column="fname",
                         prompt_template=prompt_template, chat_template=chat_template,
                         max_source_length=max_source_length, max_target_length=max_target_length,
                         truncation=truncation, max_rows=max_rows, max_eval_rows=max_eval_rows, seed=seed,
                         batch_size=batch_size, eval_batch_size=eval_batch_size, num_workers=num_workers,
                         group_by_length=group_by_length)
        self.data_dir = data_dir
