"""Extractive QA features (Devlin et al. 2019, https://arxiv.org/abs/1810.04805, Sec. 4.2): question first, context
second, only the context truncated; a long context becomes several windows of ``max_length`` tokens overlapping by
``stride`` tokens. The training target of a window is the token span of the first gold answer, or position 0 when the
answer is not wholly inside the window. Each feature keeps its character offsets and a context mask, so answers are
decoded from the context only.
"""

from __future__ import annotations

from typing import Any

import torch

from lightning_adapters.data.squad_format import QAExample
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
