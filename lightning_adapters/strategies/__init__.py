"""Strategies: how a frozen Hugging Face model is made trainable."""

from lightning_adapters.strategies.base import (
    AdapterLayer,
    Strategy,
    adapter_named_parameters,
    adapter_state_dict,
    find_modules,
    match_target,
)
from lightning_adapters.strategies.bottleneck import Bottleneck, BottleneckLayer

__all__ = ["AdapterLayer", "Bottleneck", "BottleneckLayer", "Strategy", "adapter_named_parameters",
           "adapter_state_dict", "find_modules", "match_target"]
