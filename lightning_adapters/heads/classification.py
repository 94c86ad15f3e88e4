"""Sequence classification: pool the backbone's hidden states, then a linear layer over the label set.

Pooling ``auto`` takes the last non-pad token for decoders (the only position that has seen the whole text under
causal attention) and the mask-aware mean for encoders (works without a trained pooler and suits sentence-embedding
models such as MiniLM). Encoder-decoder models classify from their encoder, as sentence-T5 does.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score
from transformers import PretrainedConfig

from lightning_adapters.backbone import is_decoder_only
from lightning_adapters.errors import UserInputError
from lightning_adapters.heads.base import EpochMetrics, Stage, TaskHead, backbone_inputs, with_meta

Pooling = Literal["auto", "first", "last", "mean"]


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


class ClassificationHead(TaskHead):
    """Sequence classification head.

    Args:
        pooling: ``first`` token, ``last`` non-pad token, ``mean`` over tokens, or ``auto`` (last for decoders,
            mean otherwise).
        dropout: dropout on the pooled vector during training.
    """

    def __init__(self, pooling: Pooling = "auto", dropout: float = 0.1) -> None:
        super().__init__()
        self.pooling = pooling
        self.dropout = dropout
        self.label_names: list[str] = []
        self._pooling = pooling

    def prepare_backbone(self, model: nn.Module) -> nn.Module:
        return model.get_encoder() if getattr(model.config, "is_encoder_decoder", False) else model

    def build(self, config: PretrainedConfig, label_names: list[str] | None, tokenizer: Any = None) -> None:
        if not label_names or len(label_names) < 2:
            raise UserInputError(f"classification needs at least 2 label names, got {label_names!r} — set "
                                 "model.label_names or let the DataModule provide them")
        self.label_names = list(label_names)
        if self.pooling == "auto":
            self._pooling = "last" if is_decoder_only(config) else "mean"
        self.drop = nn.Dropout(self.dropout)
        self.classifier = nn.Linear(config.hidden_size, len(label_names))

    def forward(self, backbone: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        hidden = backbone(**backbone_inputs(batch, backbone)).last_hidden_state
        pooled = pool(hidden, batch["attention_mask"], self._pooling)
        return self.classifier(self.drop(pooled.to(self.classifier.weight.dtype)))

    def loss(self, logits: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        return F.cross_entropy(logits.float(), batch["labels"])

    def metrics(self) -> EpochMetrics:
        n = len(self.label_names)
        return EpochMetrics({"accuracy": MulticlassAccuracy(n, average="micro"),
                                 "macro_f1": MulticlassF1Score(n, average="macro")})

    def update_metrics(self, metrics: EpochMetrics, logits: torch.Tensor, batch: dict[str, Any],
                       backbone: nn.Module, stage: Stage) -> None:
        metrics.update(logits, batch["labels"])

    def predict(self, backbone: nn.Module, batch: dict[str, Any]) -> list[dict[str, Any]]:
        probabilities = self(backbone, batch).float().softmax(-1).tolist()
        texts = batch.get("text") or [None] * len(probabilities)
        rows = []
        for text, probs in zip(texts, probabilities, strict=True):
            best = max(range(len(probs)), key=probs.__getitem__)
            rows.append({"text": text, "label": self.label_names[best],
                         "probabilities": {name: round(p, 6) for name, p in zip(self.label_names, probs, strict=True)}})
        return with_meta(rows, batch)  # meta: the row id and, on a labelled split, gold_label

