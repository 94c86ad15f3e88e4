r"""Prefix tuning's mechanism: route every attention layer through one registered attention function.

Independent of transformers' cache classes. Since transformers 5 every attention layer hands its final
query/key/value tensors (after RoPE, after any cache update) to ``ALL_ATTENTION_FUNCTIONS.get_interface(
config._attn_implementation, eager_attention_forward)``. We register one attention function, give each attention
module a private copy of its config naming it, and that function prepends the layer's prefix to the key and value
tensors, prepends N visible columns to the mask (zeros to T5's relative position bias) and calls the eager or sdpa
function the layer would have called. The model-level masks are built as before (the model's config is untouched).
This holds for encoders, decoders and both stacks of encoder-decoders (self- and cross-attention), works with a KV
cache (the prefix is never stored in it) and with gradient checkpointing (the prefix is computed inside each layer, so
recomputation is exact). Refused: attention implementations other than eager/sdpa (flash/flex pack masks
differently).

Attention that does not go through the interface is covered where we have a path for it: DeBERTa-v2/v3's
disentangled attention (`prefix_disentangled`: prefix scored by content only, no relative position). Any other such
family is refused by name.

Where the prefixes come from (a plain tensor or the reparameterisation MLP) is `prefix.PrefixEncoder`'s business:
this module only asks the encoder of each routed layer for ``key_value(index)``.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from transformers import AttentionInterface

from lightning_adapters.errors import UserInputError
from lightning_adapters.strategies import prefix_disentangled
from lightning_adapters.strategies.layers import Layers, keep_layers

if TYPE_CHECKING:  # prefix.py imports this module
    from lightning_adapters.strategies.prefix import PrefixEncoder

ATTENTION_NAME = "lightning_adapters_prefix"
_SLOT = "_lightning_adapters_prefix"


@dataclass
class Slot:
    """What the attention function needs about one attention module (a plain attribute, not a submodule)."""

    index: int
    inner: Callable | None  # None on the DeBERTa path, which has no interface function to call
    implementation: str  # eager, sdpa, or "disentangled" (DeBERTa)
    encoder: PrefixEncoder | None = None  # None while tracing shapes
    seen: tuple[torch.Tensor, torch.Tensor] | None = None


def prefix_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The registered attention function: the layer's own eager/sdpa attention over ``[prefix; keys]``."""
    slot: Slot = getattr(module, _SLOT)
    if slot.encoder is None or not slot.encoder.active:
        slot.seen = (key.detach(), value.detach())
        return slot.inner(module, query, key, value, attention_mask, **kwargs)
    prefix_key, prefix_value = slot.encoder.key_value(slot.index)
    n, batch = prefix_key.shape[-2], key.shape[0]
    causal = kwargs.get("is_causal")  # as sdpa decides it: the call's flag, else the layer's
    causal = getattr(module, "is_causal", True) if causal is None else causal
    attention_mask = _extend_mask(attention_mask, query, key.shape[-2], n, slot.implementation, causal)
    if kwargs.get("position_bias") is not None:  # T5: no relative-position bias towards the prefix
        bias = kwargs["position_bias"]
        kwargs["position_bias"] = torch.cat([bias.new_zeros(*bias.shape[:-1], n), bias], dim=-1)
    key = torch.cat([prefix_key.to(key.dtype).expand(batch, -1, -1, -1), key], dim=-2)
    value = torch.cat([prefix_value.to(value.dtype).expand(batch, -1, -1, -1), value], dim=-2)
    return slot.inner(module, query, key, value, attention_mask, **kwargs)


def _extend_mask(mask: torch.Tensor | None, query: torch.Tensor, key_length: int, n: int, implementation: str,
                 causal: bool) -> torch.Tensor | None:
    """The mask with N always-visible prefix columns in front (bool: True, additive float: 0)."""
    if mask is None:
        # sdpa without a mask is causal when the layer is (eager without a mask is not): make that explicit, since
        # sdpa's is_causal would align the triangle to the top-left of the longer key sequence.
        q_length = query.shape[-2]
        if implementation != "sdpa" or not causal or q_length == 1:
            return None
        mask = torch.ones(q_length, key_length, dtype=torch.bool, device=query.device)
        mask = mask.tril(diagonal=key_length - q_length)[None, None]
    mask = mask[..., :key_length]
    return torch.cat([mask.new_full((*mask.shape[:-1], n), mask.dtype == torch.bool), mask], dim=-1)


AttentionInterface.register(ATTENTION_NAME, prefix_attention)


def route_attention(model: nn.Module, layers: Layers = None) -> list[Slot]:
    """Route every attention layer of ``model`` in the chosen ``layers`` (`lightning_adapters.strategies.layers`)
    through `prefix_attention` (all refusals happen before any change); the slots, in layer order, get their prefix
    encoder later."""
    found = dict(_attention_modules(model))
    routes = [(found[name], *_inner_attention(found[name]))
              for name in keep_layers(model, list(found), layers, "prefix tuning")]
    return [_install(index, *route) for index, route in enumerate(routes)]


def installed_slots(model: nn.Module) -> list[Slot]:
    """The slots `route_attention` installed in ``model``, in layer order."""
    slots = [getattr(m, _SLOT) for m in model.modules() if isinstance(getattr(m, _SLOT, None), Slot)]
    return sorted(slots, key=lambda slot: slot.index)


def _attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Attention modules we can prefix, by name: those dispatching through transformers' attention interface (found
    by their code) and DeBERTa-v2/v3's disentangled attention (found by its parts)."""
    found = [(name, module) for name, module in model.named_modules()
             if _dispatches(module) or prefix_disentangled.is_disentangled(module)]
    if not found:
        kind = getattr(getattr(model, "config", None), "model_type", None) or type(model).__name__
        raise UserInputError(f"prefix tuning cannot inject keys/values into model_type '{kind}': its attention neither "
                             "dispatches through transformers' AttentionInterface (BERT, RoBERTa, GPT-2, Llama, "
                             "Mistral, T5, BART, ...) nor is DeBERTa-v2/v3's disentangled attention — use LoRA, IA3, a "
                             "bottleneck adapter or prompt tuning for this family")
    return found


def _dispatches(module: nn.Module) -> bool:
    return hasattr(module, "config") and "ALL_ATTENTION_FUNCTIONS" in inspect.unwrap(
        type(module).forward).__code__.co_names


def _inner_attention(module: nn.Module) -> tuple[Callable | None, str]:
    """The attention function ``module`` calls now (as its own code looks it up), and the implementation's name."""
    if not _dispatches(module):
        return None, "disentangled"  # DeBERTa computes its attention itself, whatever the config names
    implementation = module.config._attn_implementation or "eager"
    scope = inspect.unwrap(type(module).forward).__globals__
    if implementation not in ("eager", "sdpa") or (implementation == "eager" and
                                                   "eager_attention_forward" not in scope):
        raise UserInputError(f"prefix tuning supports the eager and sdpa attention implementations, not "
                             f"'{implementation}' of {type(module).__name__} — load the backbone with "
                             "attn_implementation='sdpa'")
    inner = scope["ALL_ATTENTION_FUNCTIONS"].get_interface(implementation, scope.get("eager_attention_forward"))
    return inner, implementation


def _install(index: int, module: nn.Module, inner: Callable | None, implementation: str) -> Slot:
    """Route ``module``'s attention through `prefix_attention` (which then calls ``inner``), or DeBERTa's through
    `prefix_disentangled`."""
    slot = Slot(index, inner, implementation)
    setattr(module, _SLOT, slot)
    if inner is None:
        prefix_disentangled.install(module, slot)
        return slot
    config = copy.copy(module.config)  # private copy: the model-level config (and so its masks) stays as it was
    config._attn_implementation_internal = ATTENTION_NAME
    module.config = config
    return slot


def probe_inputs(model: nn.Module, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """``ids`` (1 x n) as the inputs of one forward pass; an encoder-decoder's decoder reads them too."""
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if "decoder_input_ids" in inspect.signature(model.forward).parameters:
        inputs["decoder_input_ids"] = ids
    return inputs


def trace_key_values(model: nn.Module, slots: list[Slot]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One forward on 4 dummy tokens; every attention layer must report its key/value tensors."""
    device = next(model.parameters()).device
    ids = torch.arange(1, 5, device=device)[None] % (getattr(model.config, "vocab_size", None) or 5)
    return run_without_prefix(model, slots, probe_inputs(model, ids))


def run_without_prefix(model: nn.Module, slots: list[Slot], inputs: dict) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Run ``model`` on ``inputs`` with its prefixes switched off; each slot's layer must report its keys/values."""
    encoder = slots[0].encoder
    was_active = encoder is not None and encoder.active
    try:
        if encoder is not None:
            encoder.active = False
        with torch.no_grad():
            model(**inputs)
        silent = [slot.index for slot in slots if slot.seen is None]
        if silent:
            raise UserInputError(f"prefix tuning: attention layers {silent} of {type(model).__name__} did not run on "
                                 "the probe input — this architecture is not supported")
        return [slot.seen for slot in slots]
    finally:
        for slot in slots:
            slot.seen = None
        if encoder is not None:
            encoder.active = was_active

