"""Sequence classification: pool the backbone's hidden states, then a linear layer over the label set.

Pooling ``auto`` takes the last non-pad token for decoders (the only position that has seen the whole text under
causal attention) and the mask-aware mean for encoders (works without a trained pooler and suits sentence-embedding
models such as MiniLM). Encoder-decoder models classify from their encoder, as sentence-T5 does. ``pooler`` classifies
the backbone's own pooler output (BERT's dense + tanh on ``[CLS]``, frozen with the base): exactly what
``BertForSequenceClassification`` computes, so such a head exports as a plain transformers model (`merged_export`).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score, MulticlassStatScores
from transformers import PretrainedConfig

from lightning_adapters.backbone import is_decoder_only
from lightning_adapters.errors import UserInputError
from lightning_adapters.heads.base import EpochMetrics, Stage, TaskHead, backbone_inputs, check_dropout, with_meta

Pooling = Literal["auto", "first", "last", "mean", "pooler"]


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """(batch, seq, dim) -> (batch, dim). Works for left and right padding."""
    if pooling == "first":
        return hidden[:, 0]
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
    if pooling == "mean":
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    last = (positions * attention_mask).argmax(dim=1)  # the last position whose mask is 1
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


class PerClassScores(MulticlassStatScores):
    """Precision, recall and F1 of every class, as ``precision_<label>``, ``recall_<label>``, ``f1_<label>`` (0 where
    undefined, as torchmetrics' ``zero_division=0``). Counts are summed across ranks, so it is exact under DDP."""

    def __init__(self, label_names: list[str]) -> None:
        super().__init__(len(label_names), average=None)
        self.label_names = list(label_names)

    def compute(self) -> dict[str, torch.Tensor]:
        tp, fp, _, fn, _ = super().compute().double().unbind(-1)
        precision = torch.where(tp + fp > 0, tp / (tp + fp).clamp(min=1), 0.0)
        recall = torch.where(tp + fn > 0, tp / (tp + fn).clamp(min=1), 0.0)
        f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12), 0.0)
        scores = {}
        for i, label in enumerate(self.label_names):
            scores |= {f"precision_{label}": precision[i], f"recall_{label}": recall[i], f"f1_{label}": f1[i]}
        return scores


def balanced_weights(counts: list[int], label_names: list[str]) -> list[float]:
    """scikit-learn's ``balanced`` weights: total / (classes × count), so each class weighs as much in the loss."""
    if len(counts) != len(label_names):
        raise UserInputError(f"label_counts has {len(counts)} entries for {len(label_names)} labels — give one count "
                             "per label, in label_names order")
    missing = [name for name, count in zip(label_names, counts, strict=True) if count <= 0]
    if missing:
        raise UserInputError(f"class_weights: balanced needs training rows of every label; none of {missing} — drop "
                             "those labels or give class_weights as a list")
    return [sum(counts) / (len(counts) * count) for count in counts]


class ClassificationHead(TaskHead):
    """Sequence classification head.

    Args:
        pooling: ``first`` token, ``last`` non-pad token, ``mean`` over tokens, ``pooler`` (the backbone's pooler
            output, as ``BertForSequenceClassification``), or ``auto`` (last for decoders, mean otherwise).
        dropout: dropout on the pooled vector during training.
        class_weights: weight of each label in the loss, in label_names order, or ``balanced``: inverse label
            frequency in the training data (total / (classes × count)); default: every label weighs 1.
        label_counts: training rows per label (label_names order), read by ``balanced``; the CLI links it from the
            DataModule (through ``AdapterModule(label_counts=...)``).
    """

    reads = {"input_ids": "token ids", "attention_mask": "token mask", "labels": "class id per row"}

    def __init__(self, pooling: Pooling = "auto", dropout: float = 0.1,
                 class_weights: list[float] | Literal["balanced"] | None = None,
                 label_counts: list[int] | None = None) -> None:
        super().__init__()
        self.pooling = pooling
        self.dropout = check_dropout(dropout)
        self.class_weights = class_weights
        self.label_counts = label_counts
        self.label_names: list[str] = []
        self._pooling = pooling

    def prepare_backbone(self, model: nn.Module) -> nn.Module:
        model = model.get_encoder() if getattr(model.config, "is_encoder_decoder", False) else model
        if self.pooling == "pooler" and getattr(model, "pooler", None) is None:
            raise UserInputError(f"pooling: pooler needs a backbone with a pooler layer (BERT, ALBERT); "
                                 f"{type(model).__name__} has none — use first, last or mean")
        return model

    def build(self, config: PretrainedConfig, label_names: list[str] | None, tokenizer: Any = None) -> None:
        if not label_names or len(label_names) < 2:
            raise UserInputError(f"classification needs at least 2 label names, got {label_names!r} — set "
                                 "model.label_names or let the DataModule provide them")
        self.label_names = list(label_names)
        if self.pooling == "auto":
            self._pooling = "last" if is_decoder_only(config) else "mean"
        self.drop = nn.Dropout(self.dropout)
        self.classifier = nn.Linear(config.hidden_size, len(label_names))
        weights = self._weights()
        # not persistent: derived from the settings, and checkpoints hold trainable weights only
        self.register_buffer("loss_weights", None if weights is None else torch.tensor(weights), persistent=False)

    def _weights(self) -> list[float] | None:
        if self.class_weights is None:
            return None
        if self.class_weights == "balanced":
            if self.label_counts is None:
                raise UserInputError("class_weights: balanced needs the training label counts — use the CLI (it links "
                                     "them from the DataModule), pass label_counts, or give class_weights as a list")
            return balanced_weights(list(self.label_counts), self.label_names)
        if isinstance(self.class_weights, str) or len(self.class_weights) != len(self.label_names):
            raise UserInputError(f"class_weights {self.class_weights!r} does not give one weight per label "
                                 f"({len(self.label_names)}: {', '.join(self.label_names)}) — list one per label, "
                                 "or use balanced")
        if not all(w >= 0 for w in self.class_weights) or not any(w > 0 for w in self.class_weights):
            raise UserInputError(f"class_weights {self.class_weights} must be >= 0 and not all 0 — fix them")
        return [float(w) for w in self.class_weights]

    def forward(self, backbone: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        outputs = backbone(**backbone_inputs(batch, backbone))
        if self._pooling == "pooler":
            pooled = outputs.pooler_output
        else:
            pooled = pool(outputs.last_hidden_state, batch["attention_mask"], self._pooling)
        return self.classifier(self.drop(pooled.to(self.classifier.weight.dtype)))

    def loss(self, logits: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        return F.cross_entropy(logits.float(), batch["labels"], weight=self.loss_weights)

    def monitor(self) -> tuple[str, str]:
        return "macro_f1", "max"  # accuracy flatters a majority class

    def metrics(self) -> EpochMetrics:
        n = len(self.label_names)
        # compute_groups off: update_metrics feeds per_class in test only, so the members' states differ
        return EpochMetrics({"accuracy": MulticlassAccuracy(n, average="micro"),
                             "macro_f1": MulticlassF1Score(n, average="macro"),
                             "per_class": PerClassScores(self.label_names)}, compute_groups=False)

    def update_metrics(self, metrics: EpochMetrics, logits: torch.Tensor, batch: dict[str, Any],
                       backbone: nn.Module, stage: Stage) -> None:
        # per-class scores (test_f1_<label>, ...) at test only: 3 numbers per label each epoch would flood validation
        names = ("accuracy", "macro_f1", "per_class") if stage == "test" else ("accuracy", "macro_f1")
        for name in names:
            metrics[name].update(logits, batch["labels"])

    def predict(self, backbone: nn.Module, batch: dict[str, Any]) -> list[dict[str, Any]]:
        probabilities = self(backbone, batch).float().softmax(-1).tolist()
        texts = batch.get("text") or [None] * len(probabilities)
        rows = []
        for text, probs in zip(texts, probabilities, strict=True):
            best = max(range(len(probs)), key=probs.__getitem__)
            rows.append({"text": text, "label": self.label_names[best],
                         "probabilities": {name: round(p, 6) for name, p in zip(self.label_names, probs, strict=True)}})
        return with_meta(rows, batch)  # meta: the row id and, on a labelled split, gold_label

