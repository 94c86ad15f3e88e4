"""Where adapters help most: a gradient probe that ranks a model's layers for a task, and a budget of the best.

The probe takes the module as configured — the strategy's adapters in every layer, at initialisation — runs a few
training batches forward and backward (without dropout), and scores each layer by the root mean square of the loss
gradient over its adapter weights, averaged over the batches. At initialisation these adapters leave the base
model's function unchanged (LoRA's B, a bottleneck's up-projection are zero; IA3's scales are one), so a layer's
score is how fast the task loss falls per unit of adapter weight trained there: the first-order benefit of an
adapter in that layer.
`choose_layers` keeps the ``budget`` best; the result is a ``layers`` list (`lightning_adapters.strategies.layers`)
that a run uses like any other. For an encoder-decoder an index names that block of both stacks (``layers``'
meaning), so its score is taken over both blocks' adapter weights together.

Strategies whose weights live in per-layer modules are probed: bottleneck, LoRA and IA3. Prefix tuning keeps every
layer's prefix in one tensor and prompt tuning works at the input: for those, choose ``layers`` by hand.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device

from lightning_adapters.errors import UserInputError
from lightning_adapters.module import AdapterModule
from lightning_adapters.strategies.base import adapter_layers
from lightning_adapters.strategies.layers import block_of

PROBED = ("Bottleneck", "Lora", "IA3")


def layer_scores(module: AdapterModule, batches: Iterable[dict[str, Any]]) -> dict[int, float]:
    """``{layer index: score}`` (see the module docstring) over ``batches``; the module's weights are left as they
    were, its gradients cleared."""
    if type(module.strategy).__name__ not in PROBED:
        raise UserInputError(f"the placement probe scores per-layer adapter modules (bottleneck, LoRA, IA3), not "
                             f"{type(module.strategy).__name__} — choose its layers by hand (strategy layers option)")
    groups: dict[int, list[torch.nn.Parameter]] = defaultdict(list)
    for path, layer in adapter_layers(module.backbone):
        block = block_of(module.backbone, path)
        if block is not None:
            groups[block[1]] += [param for _, param in layer.adapter_named_parameters() if param.requires_grad]
    if not groups:
        raise UserInputError("the model has no adapter inside a numbered stack of layers to score — check the "
                             "strategy's target modules")
    totals: dict[int, float] = defaultdict(float)
    count = 0
    was_training = module.training
    module.eval()  # no dropout: the same scores for the same batches
    try:
        for batch in batches:
            module.zero_grad(set_to_none=True)
            batch = move_data_to_device(batch, module.device)
            module.task_head.loss(module(batch), batch).backward()
            for index, params in groups.items():
                squares = sum(float(p.grad.float().pow(2).sum()) for p in params if p.grad is not None)
                totals[index] += math.sqrt(squares / sum(p.numel() for p in params))
            count += 1
    finally:
        module.zero_grad(set_to_none=True)
        module.train(was_training)
    if count == 0:
        raise UserInputError("the placement probe got no training batch — give it data with a training split")
    return {index: totals[index] / count for index in sorted(groups)}


def choose_layers(scores: dict[int, float], budget: int) -> list[int]:
    """The ``budget`` best-scored layer indices, in layer order (ties: the lower index)."""
    if not 1 <= budget <= len(scores):
        raise UserInputError(f"a budget of {budget} layers is not between 1 and the {len(scores)} layers the model "
                             "has — give --budget in that range")
    return sorted(ranked(scores)[:budget])


def ranked(scores: dict[int, float]) -> list[int]:
    """Layer indices from the best score down (ties: the lower index first)."""
    return sorted(scores, key=lambda index: (-scores[index], index))
