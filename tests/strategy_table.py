"""The one table of strategies the tests run over: how each is built small, and what its contract promises.

`tests/test_strategy_contract.py` runs every entry through the same contract automatically; other test files take
the entries they need with `pick` (so a new strategy is one line here, not a list copied into each file).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from lightning_adapters.strategies import IA3, Bottleneck, FullFineTuning, Lora, PrefixTuning, PromptTuning, Strategy
from lightning_adapters.strategies.base import class_path


@dataclass(frozen=True)
class Entry:
    """A strategy class with small test settings, and the contract facts the suite checks in both directions."""

    cls: type[Strategy]
    kwargs: dict[str, Any] = field(default_factory=dict)
    identity_at_init: bool = True  # the adapted model computes the base model's outputs before training
    mergeable: bool = False  # merge_adapters folds it into the base weights exactly (and unmerge takes it out)

    def build(self, **overrides: Any) -> Strategy:
        return self.cls(**(self.kwargs | overrides))

    def config(self, **overrides: Any) -> dict:
        """The ``class_path``/``init_args`` form a YAML config (the CLI) names it by."""
        return {"class_path": class_path(self.cls), "init_args": self.kwargs | overrides}


STRATEGIES: dict[str, Entry] = {
    # tanh, not ReLU: no dead units, so every adapter weight gets a gradient (gradient-checkpointing test)
    "bottleneck": Entry(Bottleneck, {"variant": "houlsby", "activation": "tanh"}),
    "pfeiffer": Entry(Bottleneck, {"variant": "pfeiffer", "activation": "tanh"}),
    "parallel": Entry(Bottleneck, {"variant": "parallel", "activation": "tanh"}),
    "lora": Entry(Lora, {"r": 4}, mergeable=True),
    "ia3": Entry(IA3, mergeable=True),
    "prompt": Entry(PromptTuning, {"num_virtual_tokens": 3}, identity_at_init=False),
    "prefix": Entry(PrefixTuning, {"num_virtual_tokens": 3, "hidden": 16}, identity_at_init=False),
    "full": Entry(FullFineTuning),
}


def pick(*names: str, **overrides: dict[str, Any]) -> dict[str, Callable[[], Strategy]]:
    """``{name: factory}`` for ``names`` and the names given settings to override, e.g.
    ``pick("bottleneck", "lora", prefix={"reparameterize": False})``; parameter ids are the table's names."""
    chosen = list(names) + [name for name in overrides if name not in names]
    return {name: (lambda name=name: STRATEGIES[name].build(**overrides.get(name, {}))) for name in chosen}


def trained(module, seed: int = 1):
    """Every trainable weight moved off its initialisation, as training would (zero up-projections, unit IA3 scales
    and a fresh head would hide a wrong export or route)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for _, param in module.trainable_parameters():
            param.add_(torch.randn_like(param) * 0.2)
    return module
