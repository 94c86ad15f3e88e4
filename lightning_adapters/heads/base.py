"""The task-head protocol: what is predicted, from which model class, and how it is scored.

A head chooses the Hugging Face class its backbone is loaded with (``auto_class``), may narrow the loaded model to
the part it uses (``prepare_backbone``), creates its new layers once the backbone, label names and (when it asks for
one with ``uses_tokenizer``) the tokenizer are known (``build``), and turns a batch into outputs, a loss, metric
updates and JSON-ready predictions. Its new weights are trainable and are saved with the adapter.

The module calls, per batch: ``forward`` + ``loss`` in training; ``forward`` + ``loss`` + ``update_metrics`` in
validation/test; ``predict`` in prediction. ``update_metrics`` and ``predict`` get the backbone, so generative heads
can run ``generate``; ``update_metrics`` also gets the stage (``"val"`` or ``"test"``), so a head can skip costly
work where only some stages need it. Metrics are torchmetrics objects (synced across ranks), computed once per
epoch by the module: their ``compute`` may return a scalar or a flat dict of scalars (e.g. per-entity-type F1).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from torch import nn
from torchmetrics import MetricCollection
from transformers import AutoModel, PretrainedConfig

from lightning_adapters.strategies.base import class_config

Stage = Literal["val", "test"]  # the evaluation stage update_metrics is called in


class TaskHead(nn.Module):
    """Base class for task heads. Subclasses store every ``__init__`` argument under the same name."""

    auto_class: ClassVar[type] = AutoModel
    uses_tokenizer: ClassVar[bool] = False  # True: build() receives the backbone's tokenizer (e.g. to decode text)

    def prepare_backbone(self, model: nn.Module) -> nn.Module:
        """The part of the loaded model this head runs (all of it by default)."""
        return model

    def build(self, config: PretrainedConfig, label_names: list[str] | None, tokenizer: Any = None) -> None:
        """Create the head's trainable layers (``tokenizer`` is given when ``uses_tokenizer`` is True)."""
        raise NotImplementedError

    def forward(self, backbone: nn.Module, batch: dict[str, Any]) -> Any:
        """The outputs ``loss`` and ``update_metrics`` read (logits, or a tuple of them)."""
        raise NotImplementedError

    def loss(self, outputs: Any, batch: dict[str, Any]) -> torch.Tensor:
        raise NotImplementedError

    def metrics(self) -> MetricCollection:
        raise NotImplementedError

    def update_metrics(self, metrics: MetricCollection, outputs: Any, batch: dict[str, Any],
                       backbone: nn.Module, stage: Stage) -> None:
        raise NotImplementedError

    def predict(self, backbone: nn.Module, batch: dict[str, Any]) -> list[dict[str, Any]]:
        """One JSON-ready dict per example of ``batch``."""
        raise NotImplementedError

    def hparams(self) -> dict:
        return class_config(self)


BACKBONE_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def backbone_inputs(batch: dict[str, Any], backbone: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors of ``batch`` the backbone reads; token_type_ids only where the model has type embeddings."""
    inputs = {k: batch[k] for k in BACKBONE_INPUTS if k in batch}
    if "token_type_ids" in inputs and getattr(backbone.config, "type_vocab_size", 0) in (0, None):
        inputs.pop("token_type_ids")
    return inputs
