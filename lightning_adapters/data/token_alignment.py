"""Sub-word alignment for token classification, and the token batch.

Sub-word alignment. Each sentence is tokenized as its words joined by single spaces (the text that predictions
report character spans in); every token is mapped to the word holding its first non-space character through the
fast tokenizer's offsets, which works for WordPiece, byte-level BPE and SentencePiece alike. ``label_subwords``
picks which tokens carry a word's label in the loss: ``first`` (the rest get -100, the default, as in BERT's NER
setup), ``last`` (better for causal decoders, whose last sub-word has read the whole word) or ``all`` (continuation
sub-words of ``B-X`` get ``I-X``). The word's prediction is read at its first sub-word (``last``: its last).
Batches carry ``word_positions`` (that token index per word, -1 for a word cut off by ``max_length``) and
``word_labels`` (the word-level gold tags, -100 padding), so metrics are computed on words, the unit seqeval and
conlleval score: truncated words count as predicted ``O``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def align(words: list[str], offsets: list[tuple[int, int]]) -> tuple[list[int], list[list[int]]]:
    """Per token the index of its word (-1: special or space-only token), and per word its token indices."""
    owner = np.full(sum(len(w) for w in words) + len(words), -1)
    start = 0
    for index, word in enumerate(words):
        owner[start:start + len(word)] = index
        start += len(word) + 1
    text = " ".join(words)
    token_words, word_tokens = [], [[] for _ in words]
    for position, (begin, end) in enumerate(offsets):
        chars = [c for c in range(begin, end) if not text[c].isspace()]
        word = int(owner[chars[0]]) if chars else -1
        token_words.append(word)
        if word >= 0:
            word_tokens[word].append(position)
    return token_words, word_tokens


class TokenCollator:
    """Pads input_ids/attention_mask (tokenizer's pad token and side), labels with -100 on the same side, and the
    word-level tensors on the right; ``word_positions`` are shifted by any left padding. Prediction batches
    (``with_words``) also carry the ``words`` and each sentence's ``meta`` (id, gold tags)."""

    def __init__(self, tokenizer, with_words: bool = False) -> None:
        self.tokenizer, self.with_words = tokenizer, with_words

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        inputs = [{"input_ids": it["input_ids"], "attention_mask": it["attention_mask"]} for it in items]
        batch = dict(self.tokenizer.pad(inputs, return_tensors="pt"))
        width, left = batch["input_ids"].shape[1], self.tokenizer.padding_side == "left"
        words = max(len(it["word_positions"]) for it in items)
        positions = torch.full((len(items), words), -1, dtype=torch.long)
        word_labels = torch.full((len(items), words), -100, dtype=torch.long)
        labels = torch.full((len(items), width), -100, dtype=torch.long)
        for row, item in enumerate(items):
            shift = width - len(item["input_ids"]) if left else 0
            pos = torch.tensor(item["word_positions"], dtype=torch.long)
            positions[row, :len(pos)] = torch.where(pos >= 0, pos + shift, pos)
            if "labels" in item:
                labels[row, shift:shift + len(item["labels"])] = torch.tensor(item["labels"])
                word_labels[row, :len(pos)] = torch.tensor(item["word_labels"])
        batch.update(word_positions=positions, word_labels=word_labels, labels=labels)
        if self.with_words:
            batch["words"] = [item["words"] for item in items]
            batch["meta"] = [item.get("meta") or {} for item in items]
        return batch
