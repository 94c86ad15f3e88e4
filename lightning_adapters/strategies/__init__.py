"""Strategies: how a frozen Hugging Face model is made trainable."""

from lightning_adapters.strategies.base import (
    AdapterLayer,
    Strategy,
    adapter_named_parameters,
    adapter_state_dict,
    declared_peft_type,
    export_weights,
    find_modules,
    match_target,
    trained_base_parameters,
)
from lightning_adapters.strategies.bottleneck import Bottleneck, BottleneckLayer
from lightning_adapters.strategies.full import FullFineTuning
from lightning_adapters.strategies.fusion import AdapterFusion, FusionLayer
from lightning_adapters.strategies.ia3 import IA3, IA3Layer
from lightning_adapters.strategies.lora import Lora, LoraLayer, merge_adapters, unmerge_adapters
from lightning_adapters.strategies.prefix import PrefixEncoder, PrefixTuning, capture_key_values
from lightning_adapters.strategies.prompt import PromptEmbedding, PromptTuning

__all__ = ["AdapterFusion", "AdapterLayer", "Bottleneck", "BottleneckLayer", "FullFineTuning", "FusionLayer", "IA3",
           "IA3Layer", "Lora", "LoraLayer", "PrefixEncoder", "PrefixTuning", "PromptEmbedding", "PromptTuning",
           "Strategy", "adapter_named_parameters", "adapter_state_dict", "capture_key_values", "declared_peft_type",
           "export_weights", "find_modules", "match_target", "merge_adapters", "trained_base_parameters",
           "unmerge_adapters"]
