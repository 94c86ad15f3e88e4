"""Full fine-tuning: every weight of the base model trains; nothing is injected.

The baseline the adapters are measured against (``recipes/benchmark``), written as a strategy like the others so
that the optimizer, the parameter count, checkpoints and exports treat it through the one definition of trainable
(``requires_grad``, `AdapterModule.trainable_names`) with no special case anywhere. Its exports therefore hold every
base weight: a whole model, not a small adapter (`export_state` warns with the size). It exports to no PEFT format.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from lightning_adapters.strategies.base import Strategy


class FullFineTuning(Strategy):
    """Train every weight of the base model (the full fine-tuning baseline; exports are whole models)."""

    def __init__(self) -> None:  # no options; defined so that the saved config lists none (`class_config`)
        pass

    def apply(self, model: nn.Module) -> None:
        # fp32 master weights follow from AdapterModule's precision policy: it keeps every trainable weight in fp32.
        model.requires_grad_(True)

    def export_state(self, model: nn.Module, adapter: str | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
        """No adapter layers: `export_weights` adds every (trainable) base weight; say how large that is."""
        size = sum(param.numel() for param in model.parameters()) * 4  # exports are written in fp32
        warnings.warn(f"full fine-tuning exports every base weight ({size / 2**20:.1f} MiB in fp32): the folder is a "
                      "whole model, not a small adapter", stacklevel=3)
        return super().export_state(model, adapter)
