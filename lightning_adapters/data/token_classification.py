"""Token classification (NER) data from CoNLL files or the Hub: read and check eagerly, align labels, pad per batch.

Sub-word alignment and the token batch: `lightning_adapters.data.token_alignment`; CoNLL files, tagging schemes and
the tag set: `lightning_adapters.data.conll_format`.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Literal

from lightning.pytorch.utilities import rank_zero_info

from lightning_adapters.backbone import load_tokenizer, resolve
from lightning_adapters.data.augmentation import Augmentation, AugmentedRows
from lightning_adapters.data.conll_format import (
    SCHEMES,
    Scheme,
    Sentence,
    check_tag_names,
    read_conll,
    read_hub,
    tag_names,
)
from lightning_adapters.data.lengths import fit_max_length
from lightning_adapters.data.loaders import SplitDataModule, row_ids
from lightning_adapters.data.readers import Table, cell_text, rows_table
from lightning_adapters.data.source import read_splits
from lightning_adapters.data.splits import carve_missing_splits
from lightning_adapters.data.token_alignment import TokenCollator, align
from lightning_adapters.errors import UserInputError

TEXT_COLUMN = "text"  # in-memory rows may give a sentence as text instead of its words


def row_words(table: Table, row: int, tokens_column: str) -> list[str]:
    """The words of an in-memory row: its ``tokens_column`` list, else its ``text`` split at whitespace (a CoNLL
    file's words hold no whitespace either)."""
    if tokens_column in table.columns:
        words = table.columns[tokens_column][row]
        if not isinstance(words, list | tuple) or not all(isinstance(w, str) and w.split() == [w] for w in words):
            raise UserInputError(f"{table.where(row)}: '{tokens_column}' must be a list of words (strings without "
                                 f"spaces), got {str(words)[:60]} — split the sentence into words, or give its "
                                 f"'{TEXT_COLUMN}'")
        words = list(words)
    elif TEXT_COLUMN in table.columns:
        words = cell_text(table.columns[TEXT_COLUMN][row], table.where(row), TEXT_COLUMN).split()
    else:
        raise UserInputError(f"{table.source} has neither '{tokens_column}' nor '{TEXT_COLUMN}' (columns: "
                             f"{', '.join(table.columns)}) — give each row its words or its text")
    if not words:
        raise UserInputError(f"{table.where(row)}: no words to tag — fill it in or remove the row")
    return words


class TokenClassificationDataModule(SplitDataModule):
    """NER / token classification from CoNLL-format files or a Hub dataset.

    Args:
        tokenizer: backbone alias, folder or hub id whose (fast) tokenizer is used (the CLI links it from the model).
        train_file: training file, CoNLL format (``token [other columns] tag`` per line, blank line between sentences).
        validation_file: validation file; carved from the training sentences when missing.
        test_file: test file.
        predict_file: sentences to tag, CoNLL format (only the first column is read); the test split when missing.
            Prediction rows hold the sentence ``id`` (its 0-based index in its file or Hub split) and, on a labelled
            split, ``gold_tags`` (IOB2).
        tokens_field: Hub dataset column holding the word lists.
        tags_field: Hub dataset column holding the tags (names, ClassLabel ids, or ids into ``label_names``).
        tag_column: column of the tag in CoNLL files (0 is the token; negative counts from the end).
        scheme: tagging scheme of the input (``auto``, ``IOB1``, ``IOB2``, ``IO``); always normalised to IOB2.
        label_names: IOB2 tag set in id order; default: ``O`` then ``B-T``, ``I-T`` per training entity type, sorted.
        label_subwords: which sub-words of a word carry its label: ``first``, ``last`` or ``all``.
        validation_fraction: share of the training documents (``-DOCSTART-`` sections; else sentences) held out for
            validation when there is no validation file.
        max_length: longest tokenized sentence; words past it are cut off (and count as predicted ``O``); capped at the
            backbone's positions.
        augment: augment the training sentences with token edits of their ``O`` words that keep every entity span
            (`lightning_adapters.data.augmentation.Augmentation`; no paraphrases); other splits are never augmented.
    """

    batch_keys = {"input_ids": "token ids", "attention_mask": "token mask", "labels": "tag id per token",
                  "word_positions": "token index per word", "word_labels": "tag id per word", "words": "row words",
                  "meta": "row meta"}
    carved_splits = ("validation",)  # a test split is never carved: NER test sets are fixed

    def __init__(self, tokenizer: str = "minilm", train_file: str | None = None, validation_file: str | None = None,
                 test_file: str | None = None, predict_file: str | None = None, hub_dataset: str | None = None,
                 hub_config: str | None = None, tokens_field: str = "tokens", tags_field: str = "ner_tags",
                 tag_column: int = -1, scheme: Scheme = "auto", label_names: list[str] | None = None,
                 label_subwords: Literal["first", "last", "all"] = "first", validation_fraction: float = 0.1,
                 seed: int = 42, max_length: int = 256, batch_size: int = 32, eval_batch_size: int | None = None,
                 num_workers: int = 0,
                 group_by_length: bool = False, augment: Augmentation | None = None) -> None:
        super().__init__()
        self.keep_options(tokenizer, seed, batch_size, eval_batch_size, num_workers, group_by_length,
                          validation_fraction, max_length=(max_length, 2, math.inf))
        if augment is not None:
            augment.check_keeps_tags()
        self.augment = augment
        if scheme not in SCHEMES:
            raise UserInputError(f"unknown scheme '{scheme}' — use one of {', '.join(SCHEMES)}")
        if label_subwords not in ("first", "last", "all"):
            raise UserInputError(f"unknown label_subwords '{label_subwords}' — use first, last or all")
        resolve(tokenizer)  # a bad local tokenizer path fails now, before any log folder exists
        self.scheme, self.label_subwords, self.max_length = scheme, label_subwords, max_length
        self.tokens_field, self.tags_field, self.tag_column = tokens_field, tags_field, tag_column
        given = check_tag_names(label_names)
        hub = read_hub(hub_dataset, hub_config, tokens_field, tags_field, given) if hub_dataset else None
        files = {"train": train_file, "validation": validation_file, "test": test_file, "predict": predict_file}
        self.splits: dict[str, list[Sentence]] = read_splits(files, lambda path, source, split: read_conll(
            path, source, None if split == "predict" else tag_column), hub)
        self.label_names: list[str] = tag_names(self.splits, given, scheme)
        # Sentence ids are taken before carving moves sentences between splits; (source, line) names a sentence.
        self.sentence_ids = {(s.source, s.line): s.line - 1 if s.hub else index
                             for sentences in self.splits.values() for index, s in enumerate(sentences)}
        self._carve_validation(validation_fraction, seed)
        self.tokenizer = None  # loaded in setup(): the data checks above need no tokenizer
        self._datasets: dict[str, list[dict[str, Any]]] = {}

    # ---- reading and checking (all in __init__) ----------------------------------------------------------------
    def _carve_validation(self, fraction: float, seed: int) -> None:
        """Hold out whole documents where the training file marks them (``-DOCSTART-``): sentences of one document
        share its parties and defined terms, so a validation set carved by sentence scores far above the test set
        (finance NER: 0.87 vs 0.64 entity F1). Without document marks, a share of the sentences."""
        train = self.splits.get("train", [])
        documents = len({s.document for s in train})
        if "validation" not in self.splits and fraction > 0 and documents >= 2:
            carve_missing_splits(self.splits, {"validation": fraction}, seed, lambda rows: [s.document for s in rows],
                                 whole_groups=True, unit="training documents")
            rank_zero_info(f"data: validation = {len({s.document for s in self.splits['validation']})} of "
                           f"{documents} training documents (whole documents)")
        else:
            carve_missing_splits(self.splits, {"validation": fraction}, seed, unit="training sentences")

    # ---- tokenizing and batching -------------------------------------------------------------------------------
    def encode(self, sentence: Sentence) -> dict[str, Any]:
        """Token ids, token labels (-100 where no label goes), and per word its prediction position and gold id."""
        encoded = self.tokenizer(" ".join(sentence.words), truncation=True, max_length=self.max_length,
                                 return_offsets_mapping=True, return_token_type_ids=False)
        _, word_tokens = align(sentence.words, encoded["offset_mapping"])
        last = self.label_subwords == "last"
        item = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"],
                "words": sentence.words, "meta": {"id": self.sentence_ids.get((sentence.source, sentence.line))},
                "word_positions": [(tokens[-1] if last else tokens[0]) if tokens else -1 for tokens in word_tokens]}
        if sentence.tags is not None:
            ids = {name: i for i, name in enumerate(self.label_names)}
            labels = [-100] * len(item["input_ids"])
            for tag, tokens in zip(sentence.tags, word_tokens, strict=True):
                if self.label_subwords == "all":
                    inside = ids.get("I-" + tag[2:], ids[tag]) if tag.startswith("B-") else ids[tag]
                    for token in tokens[1:]:
                        labels[token] = inside
                if tokens:
                    labels[tokens[-1] if last else tokens[0]] = ids[tag]
            item["labels"], item["word_labels"] = labels, [ids[tag] for tag in sentence.tags]
            item["meta"]["gold_tags"] = list(sentence.tags)
        return item

    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(self.tokenizer_name)
            if not getattr(self.tokenizer, "is_fast", False):
                raise UserInputError(f"tokenizer of '{self.tokenizer_name}' is not a fast (Rust) tokenizer; token "
                                     "classification needs its character offsets — use a backbone with tokenizer.json")
            self.max_length = fit_max_length(self.max_length, self.tokenizer_name, self.tokenizer)
        for split, sentences in self.splits.items():
            if split not in self._datasets:
                self._datasets[split] = [self.encode(sentence) for sentence in sentences]
        if not self.splits:  # built to encode in-memory rows (`for_rows`): no split to report
            return
        cut = sum(p < 0 for items in self._datasets.values() for item in items for p in item["word_positions"])
        sizes = ", ".join(f"{split} {len(sentences):,}" for split, sentences in self.splits.items())
        rank_zero_info(f"data: {sizes} sentences; {len(self.label_names)} tags"
                       + (f"; {cut} words past max_length={self.max_length} (scored as O)" if cut else ""))
        if self.augment is not None and stage in (None, "fit") and "train" in self._datasets:
            self._augment_training()  # after the count above: it counts the sentences as read

    def _augment_training(self) -> None:
        """The training items with their edited copies (`AugmentedRows`; tags are IOB2 by now); once."""
        items = self._datasets["train"]
        if not isinstance(items, AugmentedRows):
            rows = [(sentence.words, sentence.tags) for sentence in self.splits["train"]]
            self._datasets["train"] = AugmentedRows(items, rows, self._edited_item, self.augment, self.seed, "IOB2")
            rank_zero_info(f"augment: {len(items):,} training sentences + {len(items) * self.augment.copies:,} "
                           "edited per epoch")

    def _edited_item(self, row: int, words: list[str], tags: list[str]) -> dict[str, Any]:
        """Training sentence ``row`` with its ``O`` words edited, encoded as the training items are (same id)."""
        return self.encode(replace(self.splits["train"][row], words=words, tags=tags))

    def text_rows(self, texts: list[str]) -> list[dict[str, Any]]:
        return [{TEXT_COLUMN: text} for text in texts]

    def predict_items(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Rows holding ``tokens_field`` (the words) or ``text``; ids: an ``id`` column, else the row index."""
        table = rows_table(rows, "predict rows")
        sentences = [Sentence(row_words(table, row, self.tokens_field), None, row, table.source, hub=True)
                     for row in range(len(rows))]
        items = [self.encode(sentence) for sentence in sentences]
        for item, row_id in zip(items, row_ids(table.columns, len(rows)), strict=True):
            item["meta"]["id"] = row_id
        return items

    def collator(self, stage: str) -> TokenCollator:
        """Prediction batches also carry the ``words`` for the prediction writer."""
        return TokenCollator(self.tokenizer, with_words=stage == "predict")
