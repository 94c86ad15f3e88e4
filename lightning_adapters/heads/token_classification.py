"""Token classification (NER): a linear layer over every token's hidden state, scored on words and entities.

The loss is cross-entropy over the tokens that carry a label (the DataModule puts -100 elsewhere). Predictions and
metrics are per word: each word's tag is the arg-max at the token the batch's ``word_positions`` names (its first
sub-word by default); a word cut off by ``max_length`` (position -1) is tagged ``O``. Entities are read from the IOB2
word tags with seqeval's ``get_entities`` (conlleval's rules: an ``I-X`` after something other than ``X`` starts a new
entity), so `EntityF1` equals ``seqeval.metrics.f1_score`` in its default mode, and the per-type report equals
``classification_report``. Its states are per-type TP/FP/FN counts summed across ranks, so it is exact under DDP.
Encoder-decoder models tag with their encoder, as `ClassificationHead` classifies with it.

Predict writes, per sentence, its ``id`` (and ``gold_tags`` when the split is labelled, from the batch's ``meta``),
``text`` (the words joined by single spaces), ``words``, ``tags`` and ``entities``:
``{"type", "text", "start", "end", "word_start", "word_end"}`` with character offsets into ``text`` (``end``
exclusive, so ``text[start:end]`` is the entity) and word indices (``word_end`` exclusive).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from seqeval.metrics.sequence_labeling import get_entities
from torch import nn
from torchmetrics import Metric
from transformers import PretrainedConfig

from lightning_adapters.errors import UserInputError
from lightning_adapters.heads.base import EpochMetrics, Stage, TaskHead, backbone_inputs, check_dropout, with_meta


def entity_types(label_names: list[str]) -> list[str]:
    """Entity types in first-seen order of the tag set (``B-PER``, ``I-PER``, ``B-ORG`` -> PER, ORG)."""
    return list(dict.fromkeys(name[2:] for name in label_names if name != "O"))


def decode_entities(words: list[str], tags: list[str]) -> list[dict[str, Any]]:
    """Entities of one sentence with character spans in ``" ".join(words)`` and word spans."""
    starts, offset = [], 0
    for word in words:
        starts.append(offset)
        offset += len(word) + 1
    text = " ".join(words)
    entities = []
    for kind, first, last in get_entities(list(tags)):
        start, end = starts[first], starts[last] + len(words[last])
        entities.append({"type": kind, "text": text[start:end], "start": start, "end": end,
                         "word_start": first, "word_end": last + 1})
    return entities


class EntityF1(Metric):
    """Entity-level micro precision/recall/F1 and per-type F1 over IOB2 tag sequences, exactly as seqeval scores.

    ``update(preds, targets)`` takes lists of per-sentence tag lists; ``compute()`` returns a flat dict of scalars
    (what the module logs): ``precision``, ``recall``, ``f1`` (micro over entities) and ``f1_<T>`` per type T;
    ``report()`` gives classification_report's table. Undefined ratios (0/0) are 0, as in seqeval.
    """

    full_state_update = False

    def __init__(self, types: list[str]) -> None:
        super().__init__()
        self.types = list(types)
        self._index = {kind: i for i, kind in enumerate(self.types)}
        for name in ("tp", "fp", "fn"):
            self.add_state(name, torch.zeros(len(self.types), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: list[list[str]], targets: list[list[str]]) -> None:
        counts = torch.zeros(3, len(self.types), dtype=torch.long)
        for pred, target in zip(preds, targets, strict=True):
            if len(pred) != len(target):
                raise ValueError(f"a predicted sequence has {len(pred)} tags, its target {len(target)}")
            predicted, true = set(get_entities(list(pred))), set(get_entities(list(target)))
            for row, entities in enumerate((predicted & true, predicted - true, true - predicted)):
                for kind, _, _ in entities:
                    counts[row, self._type(kind)] += 1
        self.tp += counts[0].to(self.tp.device)
        self.fp += counts[1].to(self.fp.device)
        self.fn += counts[2].to(self.fn.device)

    def _type(self, kind: str) -> int:
        if kind not in self._index:
            raise ValueError(f"entity type '{kind}' is not among {self.types}")
        return self._index[kind]

    def compute(self) -> dict[str, torch.Tensor]:
        tp, fp, fn = self.tp.double(), self.fp.double(), self.fn.double()
        result = _prf(tp.sum(), fp.sum(), fn.sum())
        for i, kind in enumerate(self.types):
            result[f"f1_{kind}"] = _prf(tp[i], fp[i], fn[i])["f1"]
        return result

    def report(self) -> dict[str, dict[str, float]]:
        """Per type (and ``micro avg``): precision, recall, f1, support — seqeval's classification_report numbers."""
        tp, fp, fn = self.tp.double(), self.fp.double(), self.fn.double()
        rows = {kind: _prf(tp[i], fp[i], fn[i]) | {"support": self.tp[i] + self.fn[i]}
                for i, kind in enumerate(self.types)}
        rows["micro avg"] = _prf(tp.sum(), fp.sum(), fn.sum()) | {"support": (self.tp + self.fn).sum()}
        return {kind: {k: float(v) for k, v in row.items()} for kind, row in rows.items()}


def _prf(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> dict[str, torch.Tensor]:
    precision = tp / (tp + fp) if tp + fp > 0 else torch.zeros_like(tp)
    recall = tp / (tp + fn) if tp + fn > 0 else torch.zeros_like(tp)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else torch.zeros_like(tp)
    return {"precision": precision, "recall": recall, "f1": f1}


class TokenClassificationHead(TaskHead):
    """Per-token classification (NER) head: dropout + Linear over the backbone's last hidden states.

    Args:
        dropout: dropout on the hidden states during training.
    """

    reads = {"input_ids": "token ids", "attention_mask": "token mask", "labels": "tag id per token",
             "word_positions": "token index per word", "word_labels": "tag id per word", "words": "row words"}

    def __init__(self, dropout: float = 0.1) -> None:
        super().__init__()
        self.dropout = check_dropout(dropout)
        self.label_names: list[str] = []

    def prepare_backbone(self, model: nn.Module) -> nn.Module:
        return model.get_encoder() if getattr(model.config, "is_encoder_decoder", False) else model

    def build(self, config: PretrainedConfig, label_names: list[str] | None, tokenizer: Any = None) -> None:
        if not label_names or "O" not in label_names or len(label_names) < 2:
            raise UserInputError(f"token classification needs IOB2 tags including 'O' and at least one entity tag, "
                                 f"got {label_names!r} — set model.label_names or let the DataModule provide them")
        bad = [name for name in label_names if name != "O" and name[:2] not in ("B-", "I-")]
        if bad:
            raise UserInputError(f"label names {bad} are not IOB2 tags (O, B-<type>, I-<type>) — fix label_names")
        self.label_names = list(label_names)
        self.drop = nn.Dropout(self.dropout)
        self.classifier = nn.Linear(config.hidden_size, len(label_names))

    def forward(self, backbone: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        hidden = backbone(**backbone_inputs(batch, backbone)).last_hidden_state
        return self.classifier(self.drop(hidden.to(self.classifier.weight.dtype)))

    def loss(self, logits: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        labels = batch["labels"]
        if not (labels != -100).any():  # every word cut off: no signal, but a graph-connected zero (not NaN)
            return logits.sum() * 0.0
        return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)

    def monitor(self) -> tuple[str, str]:
        return "f1", "max"  # entity-level (seqeval)

    def metrics(self) -> EpochMetrics:
        return EpochMetrics({"entity": EntityF1(entity_types(self.label_names))})

    def word_tags(self, logits: torch.Tensor, positions: torch.Tensor, counts: list[int]) -> list[list[str]]:
        """Per sentence the tag of each word: arg-max at its position; ``O`` where the position is -1."""
        best = logits.argmax(-1).gather(1, positions.clamp(min=0))
        best = torch.where(positions >= 0, best, self.label_names.index("O")).tolist()
        return [[self.label_names[i] for i in row[:count]] for row, count in zip(best, counts, strict=True)]

    def update_metrics(self, metrics: EpochMetrics, logits: torch.Tensor, batch: dict[str, Any],
                       backbone: nn.Module, stage: Stage) -> None:
        gold = batch["word_labels"]
        counts = (gold != -100).sum(1).tolist()
        targets = [[self.label_names[i] for i in row[:count]] for row, count in zip(gold.tolist(), counts, strict=True)]
        metrics.update(self.word_tags(logits, batch["word_positions"], counts), targets)

    def predict(self, backbone: nn.Module, batch: dict[str, Any]) -> list[dict[str, Any]]:
        words = batch["words"]
        tags = self.word_tags(self(backbone, batch), batch["word_positions"], [len(w) for w in words])
        rows = [{"text": " ".join(w), "words": w, "tags": t, "entities": decode_entities(w, t)}
                for w, t in zip(words, tags, strict=True)]
        return with_meta(rows, batch)  # meta: the sentence id and, on a labelled split, gold_tags
