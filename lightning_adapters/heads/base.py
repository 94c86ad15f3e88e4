"""The task-head protocol: what is predicted, from which model class, and how it is scored.

A head chooses the Hugging Face class its backbone is loaded with (``auto_class``), may narrow the loaded model to
the part it uses (``prepare_backbone``), creates its new layers once the backbone, label names and (when it asks for
one with ``uses_tokenizer``) the tokenizer are known (``build``), and turns a batch into outputs, a loss, metric
updates and JSON-ready predictions. Its new weights are trainable and are saved with the adapter.

The module calls, per batch: ``forward`` + ``loss`` in training; ``forward`` + ``loss`` + ``update_metrics`` in
validation/test; ``predict`` in prediction. ``update_metrics`` and ``predict`` get the backbone, so generative heads
can run ``generate``; ``update_metrics`` also gets the stage (``"val"`` or ``"test"``), so a head can skip costly
work where only some stages need it. Metrics are torchmetrics objects (synced across ranks) in an `EpochMetrics`
collection, computed once per epoch by the module: their ``compute`` may return a scalar or a flat dict of scalars
(e.g. per-entity-type F1); a metric no rank updated in the epoch is left out rather than reported as a score.

Prediction batches may carry ``meta``: one JSON-ready dict per example (its row ``id``, gold labels such as
``gold_label``), put there by the DataModule; `with_meta` starts each prediction row with it.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch
from torch import nn
from torchmetrics import Metric, MetricCollection
from transformers import AutoModel, PretrainedConfig

from lightning_adapters.errors import UserInputError
from lightning_adapters.strategies.base import class_config

Stage = Literal["val", "test"]  # the evaluation stage update_metrics is called in



def check_dropout(dropout: float) -> float:
    """A head's dropout probability, refused in one line unless it is in [0, 1)."""
    if not 0.0 <= dropout < 1.0:
        raise UserInputError(f"head dropout must be in [0, 1), got {dropout} — set e.g. dropout: 0.1")
    return dropout


class TaskHead(nn.Module):
    """Base class for task heads. Subclasses store every ``__init__`` argument under the same name."""

    auto_class: ClassVar[type] = AutoModel
    uses_tokenizer: ClassVar[bool] = False  # True: build() receives the backbone's tokenizer (e.g. to decode text)
    # Batch keys this head reads -> what each holds; the data side declares the keys it produces (``batch_keys``) and
    # the CLI refuses a head/data pair that does not match, before anything loads. Empty: nothing declared.
    reads: ClassVar[dict[str, str]] = {}

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

    def monitor(self) -> tuple[str, str]:
        """The metric a run is judged by (logged as ``val_<metric>``) and whether it is ``"max"`` or ``"min"``:
        what `lightning_adapters.BestCheckpoint` and `lightning_adapters.EarlyStopping` watch unless told another."""
        return "loss", "min"

    def metrics(self) -> EpochMetrics:
        """A fresh `EpochMetrics` (the module clones it per stage)."""
        raise NotImplementedError

    def update_metrics(self, metrics: EpochMetrics, outputs: Any, batch: dict[str, Any],
                       backbone: nn.Module, stage: Stage) -> None:
        raise NotImplementedError

    def predict(self, backbone: nn.Module, batch: dict[str, Any]) -> list[dict[str, Any]]:
        """One JSON-ready dict per example of ``batch``."""
        raise NotImplementedError

    def hparams(self) -> dict:
        return class_config(self)


def check_head_fits_data(head_class: type, data_class: type, fix: str) -> None:
    """Refuse a head that reads a batch key its data does not produce (``TaskHead.reads`` against the data's
    ``batch_keys``), from the classes alone; ``fix`` ends the message. Undeclared keys: not checked."""
    produced = getattr(data_class, "batch_keys", {})
    for key, meaning in getattr(head_class, "reads", {}).items():
        if produced and produced.get(key) != meaning:
            gives = f"gives it as {produced[key]}" if key in produced else "has no such key"
            raise UserInputError(f"{head_class.__name__} does not fit {data_class.__name__}: the head reads batch key "
                                 f"'{key}' ({meaning}), the data {gives} — {fix}")


BACKBONE_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def backbone_inputs(batch: dict[str, Any], backbone: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors of ``batch`` the backbone reads; token_type_ids only where the model has type embeddings."""
    inputs = {k: batch[k] for k in BACKBONE_INPUTS if k in batch}
    if "token_type_ids" in inputs and getattr(backbone.config, "type_vocab_size", 0) in (0, None):
        inputs.pop("token_type_ids")
    return inputs


def with_meta(rows: list[dict[str, Any]], batch: dict[str, Any]) -> list[dict[str, Any]]:
    """Prediction rows, each led by its example's ``meta`` (row id, gold labels) when the batch has it."""
    metas = batch.get("meta")
    if metas is None:
        return rows
    return [{**meta, **row} for meta, row in zip(metas, rows, strict=True)]


def updates_on_all_ranks(metrics: Sequence[Metric]) -> list[int]:
    """How often each metric was updated this epoch, summed over ranks (a collective under DDP: call on every rank)."""
    counts = torch.tensor([m.update_count for m in metrics], dtype=torch.long, device=metrics[0].device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(counts)
    return counts.tolist()


class EpochMetrics(MetricCollection):
    """A MetricCollection whose ``compute`` leaves out the metrics that no rank updated.

    A metric can see nothing in an epoch (ROUGE/BLEU when validation does not generate, an empty split); torchmetrics
    then warns and reports its empty state as a score, e.g. BLEU 0.0, which reads like a (terrible) result. Leaving
    the key out says "not measured". Update counts are summed over ranks first, so every rank computes, and
    synchronises, the same metrics. Dict results are flattened by their keys, prefixed by the metric name where
    two metrics share a key (torchmetrics' rule).
    """

    def compute(self) -> dict[str, Any]:
        members = list(self.items(keep_base=True, copy_state=False))  # also refreshes compute-group update counts
        if not members:
            return {}
        results = {}
        with warnings.catch_warnings():  # updated on another rank only: torchmetrics warns before it syncs
            warnings.filterwarnings("ignore", message=r".*was called before the ``update`` method")
            for (name, metric), count in zip(members, updates_on_all_ranks([m for _, m in members]), strict=True):
                if count:
                    results[name] = metric.compute()
        keys = [key for value in results.values() if isinstance(value, dict) for key in value]
        shared = len(keys) != len(set(keys)) or bool(set(keys) & set(results))
        flat = {}
        for name, value in results.items():
            if isinstance(value, dict):
                flat.update({f"{name}_{key}" if shared else key: v for key, v in value.items()})
            else:
                flat[name] = value
        return {f"{self.prefix or ''}{key}{self.postfix or ''}": value for key, value in flat.items()}
