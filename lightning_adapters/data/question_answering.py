"""Extractive question answering data: SQuAD-format JSON or a Hub dataset, article-disjoint splits, windowed features.

Reading (`lightning_adapters.data.squad_format`) checks everything in ``__init__``, before Lightning writes anything;
each problem is one `UserInputError` naming the file, the JSON path and the fix. Missing validation/test splits are
carved from the training data by whole articles (a ``data[]`` entry; a Hub dataset's title), seeded — so no context
is shared between splits.

Features (Devlin et al. 2019, https://arxiv.org/abs/1810.04805, Sec. 4.2): question first, context second, only the
context truncated; a long context becomes several windows of ``max_length`` tokens that overlap by ``stride``
tokens. The training target of a window is the token span of the first gold answer, or position 0 when the answer
is not wholly inside the window. Each feature keeps its character offsets and a context mask, so answers are
decoded from the context only. Validation/test/predict batches hold whole questions (all their windows), so the
per-question answer is known within a batch and DDP's sampler never splits a question across ranks.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info

from lightning_adapters.backbone import load_tokenizer, resolve
from lightning_adapters.data.loaders import SplitDataModule
from lightning_adapters.data.source import load_hub_splits, read_splits
from lightning_adapters.data.splits import carve_missing_splits
from lightning_adapters.data.squad_format import QAExample, hub_rows_to_squad, parse_squad, read_squad_json
from lightning_adapters.errors import UserInputError


def check_room(tokenizer, examples: list[QAExample], max_length: int, stride: int, source: str) -> None:
    """Every question must leave more than ``stride`` context tokens per window (else windows cannot advance)."""
    lengths = [len(ids) for ids in tokenizer([e.question.lstrip() for e in examples], add_special_tokens=False)
               ["input_ids"]]
    specials = tokenizer.num_special_tokens_to_add(pair=True)
    for example, length in zip(examples, lengths, strict=True):
        if max_length - length - specials <= stride:
            raise UserInputError(f"{source}: question '{example.id}' has {length} tokens, which leaves no more than "
                                 f"stride={stride} of max_length={max_length} tokens for the context — raise "
                                 "max_length or lower stride")


def answer_tokens(offsets: list[tuple[int, int]], context_mask: list[bool], start_char: int, end_char: int
                  ) -> tuple[int, int]:
    """Token span of characters [start_char, end_char) in one window, or (0, 0) if not wholly inside it."""
    tokens = [i for i, inside in enumerate(context_mask) if inside]
    if not tokens or offsets[tokens[0]][0] > start_char or offsets[tokens[-1]][1] < end_char:
        return 0, 0
    start = next(i for i in reversed(tokens) if offsets[i][0] <= start_char)
    end = next(i for i in tokens if offsets[i][1] >= end_char)
    return start, end


def encode_features(tokenizer, examples: list[QAExample], max_length: int, stride: int) -> list[list[dict]]:
    """The windows (features) of each example: token ids, context mask, character offsets and the answer span."""
    encoded = tokenizer([e.question.lstrip() for e in examples], [e.context for e in examples],
                        truncation="only_second", max_length=max_length, stride=stride,
                        return_overflowing_tokens=True, return_offsets_mapping=True)
    features: list[list[dict]] = [[] for _ in examples]
    for i, index in enumerate(encoded["overflow_to_sample_mapping"]):
        example = examples[index]
        context_mask = [s == 1 for s in encoded.sequence_ids(i)]
        offsets = [tuple(o) for o in encoded["offset_mapping"][i]]
        start, end = (0, 0)
        if example.answers:
            start, end = answer_tokens(offsets, context_mask, example.answer_starts[0],
                                       example.answer_starts[0] + len(example.answers[0]))
        feature = {key: encoded[key][i] for key in ("input_ids", "attention_mask", "token_type_ids") if key in encoded}
        feature.update(context_mask=context_mask, offsets=offsets, start_positions=start, end_positions=end,
                       example_index=index, example=example)
        features[index].append(feature)
    return features


def example_meta(example: QAExample) -> dict[str, Any]:
    """What a prediction row starts with: the question id and, when the split has them, its gold answers."""
    return {"id": example.id, **({"gold_answers": list(example.answers)} if example.answers else {})}


class QACollator:
    """Right-pads a list of features (or of questions, each a list of its features) into one batch.

    Right padding for every model: position i of the logits is token i of the feature, and causal decoders never
    attend to the padding after the text. Raw strings (id, question, context, answers), offsets and each feature's
    ``meta`` (`example_meta`) ride along.
    """

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, items: list[Any]) -> dict[str, Any]:
        features = [f for item in items for f in (item if isinstance(item, list) else [item])]
        width = max(len(f["input_ids"]) for f in features)
        batch: dict[str, Any] = {}
        for key, pad in (("input_ids", self.pad_token_id), ("attention_mask", 0), ("token_type_ids", 0),
                         ("context_mask", False)):
            if key in features[0]:
                rows = [list(f[key]) + [pad] * (width - len(f[key])) for f in features]
                batch[key] = torch.tensor(rows, dtype=torch.bool if key == "context_mask" else torch.long)
        for key in ("start_positions", "end_positions", "example_index"):
            batch[key] = torch.tensor([f[key] for f in features], dtype=torch.long)
        batch["offsets"] = [f["offsets"] for f in features]
        for key in ("id", "question", "context", "answers"):
            batch[key] = [getattr(f["example"], key) for f in features]
        batch["meta"] = [example_meta(f["example"]) for f in features]
        return batch


class QADataModule(SplitDataModule):
    """Extractive question answering from SQuAD-format JSON files or a Hub dataset (e.g. ``rajpurkar/squad``).

    QA has no label set: ``label_names`` is None. Training batches hold ``batch_size`` windows (features), shuffled;
    validation/test/predict batches hold ``eval_batch_size`` whole questions (with all their windows).

    Args:
        tokenizer: backbone alias, folder or hub id whose (fast) tokenizer is used (the CLI links it from the model).
        train_file: SQuAD JSON training file.
        validation_file: SQuAD JSON validation file; carved from the training articles when missing.
        test_file: SQuAD JSON test file; carved from the training articles when missing.
        predict_file: SQuAD JSON questions to answer (answers optional); the test split when missing. Prediction
            rows hold the question ``id`` and, where answers are given, ``gold_answers``.
        hub_dataset: Hugging Face dataset id in the SQuAD schema (needs network); local files override its splits.
        hub_config: configuration name of ``hub_dataset``.
        validation_fraction: share of the training articles (after the test split) held out for validation.
        test_fraction: share of the training articles held out for test.
        seed: seed of the article split and of the training-batch order.
        max_length: tokens per window (question + context + special tokens).
        stride: tokens shared by consecutive windows of a long context.
        batch_size: training batch size, in windows.
        eval_batch_size: validation/test/predict batch size, in questions (default: ``batch_size``).
        num_workers: data-loading worker processes.
        group_by_length: training batches of rows with similar token counts (less padding, faster epochs; the
            order is still seeded, exact on resume).
    """

    batch_keys = {"input_ids": "token ids", "attention_mask": "token mask", "token_type_ids": "segment ids",
                  "context_mask": "context token mask", "start_positions": "answer start token",
                  "end_positions": "answer end token", "offsets": "token character offsets",
                  "example_index": "question index per window", "id": "question ids", "question": "question texts",
                  "context": "context texts", "answers": "gold answer texts", "meta": "row meta"}

    def __init__(self, tokenizer: str = "minilm", train_file: str | None = None, validation_file: str | None = None,
                 test_file: str | None = None, predict_file: str | None = None, hub_dataset: str | None = None,
                 hub_config: str | None = None, validation_fraction: float = 0.1, test_fraction: float = 0.1,
                 seed: int = 42, max_length: int = 384, stride: int = 128, batch_size: int = 16,
                 eval_batch_size: int | None = None, num_workers: int = 0,
                 group_by_length: bool = False) -> None:
        super().__init__()
        self.keep_options(tokenizer, seed, batch_size, eval_batch_size, num_workers, group_by_length,
                          validation_fraction, test_fraction, max_length=(max_length, 8, math.inf),
                          stride=(stride, 0, max_length // 2))
        resolve(tokenizer)  # a bad local tokenizer path fails now, before any log folder exists
        self.max_length, self.stride = max_length, stride
        self.label_names = None  # no label set; the CLI links this to the model
        hub = self.read_hub(hub_dataset, hub_config) if hub_dataset else {}
        self.sources = {split: source for split, (source, _) in hub.items()}
        files = {"train": train_file, "validation": validation_file, "test": test_file, "predict": predict_file}
        self.splits = read_splits(files, self._read_file, {split: rows for split, (_, rows) in hub.items()},
                                  nothing="no question-answering data — pass train_file (or hub_dataset), test_file "
                                          "or predict_file")
        self._carve_articles(validation_fraction, test_fraction)
        self.tokenizer = None  # loaded in setup(): the data checks above need no tokenizer
        self._datasets: dict[str, list] = {}

    def _read_file(self, path: Path, source: str, split: str) -> list[QAExample]:
        self.sources[split] = source
        return read_squad_json(path, source, labelled=split != "predict")

    def read_hub(self, name: str, config: str | None) -> dict[str, tuple[str, list[QAExample]]]:
        """``{split: (source, examples)}`` of a Hub dataset in the SQuAD schema."""
        splits = {}
        for split_name, (source, split) in load_hub_splits(name, config, "local SQuAD JSON files").items():
            missing = [c for c in ("id", "title", "context", "question", "answers") if c not in split.column_names]
            if missing:
                raise UserInputError(f"{source} has no column(s) {', '.join(missing)} — use a dataset in the SQuAD "
                                     "schema (id, title, context, question, answers{text, answer_start})")
            splits[split_name] = source, parse_squad(hub_rows_to_squad(split.to_dict()), source)
        return splits

    def _carve_articles(self, validation_fraction: float, test_fraction: float) -> None:
        """Missing test/validation splits: whole articles drawn from the training ones."""
        carved = carve_missing_splits(self.splits, {"test": test_fraction, "validation": validation_fraction},
                                      self.seed, keys=lambda examples: [e.article for e in examples],
                                      whole_groups=True, unit="training article(s)")
        for split in carved:
            self.sources[split] = f"{split} articles carved from {self.sources['train']}"

    # ---- tokenizing and batching -------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(self.tokenizer_name)
            if not self.tokenizer.is_fast:
                raise UserInputError(f"the tokenizer of '{self.tokenizer_name}' is not a fast tokenizer — extractive "
                                     "QA needs character offsets; use a backbone with a tokenizer.json")
        for split, examples in self.splits.items():
            if split in self._datasets:
                continue
            check_room(self.tokenizer, examples, self.max_length, self.stride, self.sources[split])
            features = encode_features(self.tokenizer, examples, self.max_length, self.stride)
            self._datasets[split] = [f for group in features for f in group] if split == "train" else features
        sizes = ", ".join(f"{split} {len(examples):,} questions ({len({e.article for e in examples})} articles)"
                          for split, examples in self.splits.items())
        rank_zero_info(f"data: {sizes}; train windows {len(self._datasets.get('train', [])):,}")

    def collator(self, stage: str) -> QACollator:
        return QACollator(self.tokenizer.pad_token_id)
