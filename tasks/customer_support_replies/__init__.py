"""Customer-support replies: answer a customer's request as a support agent would (Bitext customer-support data).

Each row is one exchange, ``instruction`` (the customer's message) -> ``response`` (the agent's reply), with the
request's ``intent`` (27, e.g. ``cancel_order``) and ``category`` (11, e.g. ``ORDER``) kept for analysis: they are
copied into every prediction row. Two sources, one schema (Bitext's columns):

- nothing: the small sample we wrote, bundled in ``sample/`` (train/validation/test CSVs, 8 of Bitext's intents) —
  runs offline;
- ``data_dir``: the Bitext folder holding ``Bitext_Sample_Customer_Support_Training_Dataset.csv`` (4,514 rows, no
  official split): seeded test and validation splits are carved from it, each keeping every intent's share.

The data are CDLA-Sharing-1.0 (see DATA_CARD.md).
"""

from __future__ import annotations

from pathlib import Path

from lightning_adapters.data.data_location import dataset_folder
from lightning_adapters.data.dialogue import DialogueDataModule, Truncation
from lightning_adapters.errors import UserInputError

BITEXT_FILE = "Bitext_Sample_Customer_Support_Training_Dataset.csv"
SAMPLE_DIR = Path(__file__).parent / "sample"
SYSTEM_PROMPT = ("You are a customer support assistant for an online shop. Answer the customer's request helpfully "
                 "and politely, step by step where it helps.")


def bitext_file(data_dir: str) -> str:
    folder = dataset_folder(data_dir, "the Bitext customer-support dataset", "customer_support_replies")
    path = folder / BITEXT_FILE
    if not path.is_file():
        raise UserInputError(f"data_dir '{data_dir}' has no {BITEXT_FILE} — pass the Bitext customer-support folder")
    return str(path)


class CustomerSupportRepliesDataModule(DialogueDataModule):
    """Bitext customer-support replies as chat fine-tuning data; without arguments, the bundled sample.

    Args:
        data_dir: Bitext folder (default: the bundled sample, which has its own splits).
        tokenizer: backbone whose tokenizer and chat template are used (the CLI links it from the model).
        train_file: a file instead of ``data_dir`` (Bitext's columns: ``instruction``, ``response``, ``intent``,
            ``category``).
        validation_file: validation file; carved from the training rows when missing.
        test_file: test file; carved from the training rows when missing.
        predict_file: requests to answer (an ``instruction`` column; ``response`` optional); the test split when
            missing.
        system_prompt: system message put before every request (null: none; SmolLM2's template then adds its own).
        chat_template: ``auto``, ``tokenizer``, ``fallback`` or a Jinja string (see `DialogueDataModule`).
        truncation: ``oldest_turns``, ``tokens`` or ``none`` (see `DialogueDataModule`).
        validation_fraction: share of the training rows held out for validation when there is no validation file.
        test_fraction: share of the training rows held out for test when there is no test file.
        seed: seed of the split and of the training-batch order.
        max_length: longest tokenized exchange (system prompt, request and reply).
        batch_size: training batch size.
        eval_batch_size: validation/test/predict batch size (default: ``batch_size``).
        num_workers: data-loading worker processes.
        group_by_length: training batches of rows with similar token counts (less padding, faster epochs; the
            order is still seeded, exact on resume).
    """

    def __init__(self, data_dir: str | None = None, tokenizer: str = "smollm2", train_file: str | None = None,
                 validation_file: str | None = None, test_file: str | None = None, predict_file: str | None = None,
                 system_prompt: str | None = SYSTEM_PROMPT, chat_template: str = "auto",
                 truncation: Truncation = "oldest_turns", validation_fraction: float = 0.1, test_fraction: float = 0.1,
                 seed: int = 42, max_length: int = 384, batch_size: int = 8, eval_batch_size: int | None = None,
                 num_workers: int = 0,
                 group_by_length: bool = False) -> None:
        if data_dir is not None and train_file is not None:
            raise UserInputError("pass only one of data_dir and train_file — each is a full source of training data")
        if data_dir is not None:
            train_file = bitext_file(data_dir)
        elif train_file is None:  # the bundled sample: it ships its own validation and test splits
            train_file = str(SAMPLE_DIR / "train.csv")
            validation_file = validation_file or str(SAMPLE_DIR / "validation.csv")
            test_file = test_file or str(SAMPLE_DIR / "test.csv")
        super().__init__(tokenizer=tokenizer, train_file=train_file, validation_file=validation_file,
                         test_file=test_file, predict_file=predict_file, instruction_column="instruction",
                         response_column="response", system_prompt=system_prompt, meta_columns=["intent", "category"],
                         stratify_column="intent", chat_template=chat_template, truncation=truncation,
                         validation_fraction=validation_fraction, test_fraction=test_fraction, seed=seed,
                         max_length=max_length, batch_size=batch_size, eval_batch_size=eval_batch_size,
                         num_workers=num_workers,
                         group_by_length=group_by_length)
        self.data_dir = data_dir
