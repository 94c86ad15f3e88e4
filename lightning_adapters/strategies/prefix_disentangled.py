r"""Prefix tuning for DeBERTa-v2/v3's disentangled attention, which does not dispatch through AttentionInterface.

    scores = [ q P_k^T / s ,  q K^T / s + c2p(q, r) + p2c(k, r) ],    out = softmax(scores + mask) [P_v; V]

DeBERTa scores a query against a key by content plus two relative-position terms (content-to-position and
position-to-content, over the distance r between them), all divided by ``s = sqrt(d * (1 + number of terms))``.
Prefix positions are not tokens of the sequence and have no distance to any of them, so they are scored by content
only, with the layer's own ``s`` — as AdapterHub does, and as T5's prefixes get no relative bias in `prefix_attention`.
The real tokens' position terms come from the layer's own ``disentangled_attention_bias`` on the unprefixed keys, so
they are exactly the base model's. Every query (pad rows too) sees the prefix; pad keys stay masked.

The layer's ``forward`` is replaced on the instance, never on the class, by `disentangled_forward`, which reuses the
layer's projections and position terms; the prefix is computed inside it, so gradient checkpointing recomputes it
exactly. With the prefixes switched off (tracing, `capture_key_values`) the layer's own forward runs unchanged.
"""

from __future__ import annotations

import functools
import inspect
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:  # prefix_attention imports this module
    from lightning_adapters.strategies.prefix_attention import Slot

# What our forward relies on: DeBERTa-v2's DisentangledSelfAttention (DeBERTa v1 fuses q/k/v and is not covered).
_PARTS = ("query_proj", "key_proj", "value_proj", "transpose_for_scores", "disentangled_attention_bias",
          "pos_att_type", "relative_attention", "num_attention_heads", "dropout")
_ARGS = ["self", "hidden_states", "attention_mask", "output_attentions", "query_states", "relative_pos",
         "rel_embeddings"]


def is_disentangled(module: nn.Module) -> bool:
    """A DeBERTa-v2/v3 disentangled self-attention, recognised by its parts and its forward's arguments."""
    if not all(hasattr(module, part) for part in _PARTS):
        return False
    return list(inspect.signature(inspect.unwrap(type(module).forward)).parameters) == _ARGS


def install(module: nn.Module, slot: Slot) -> None:
    """Run ``module`` through `disentangled_forward` (an instance attribute: deep copies and pickles follow it)."""
    module.forward = functools.partial(disentangled_forward, module, slot)


def disentangled_forward(module: nn.Module, slot: Slot, hidden_states: torch.Tensor, attention_mask: torch.Tensor,
                         output_attentions: bool = False, query_states: torch.Tensor | None = None,
                         relative_pos: torch.Tensor | None = None, rel_embeddings: torch.Tensor | None = None,
                         ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """DeBERTa-v2's attention over ``[prefix; keys]``; the layer's own forward while the prefixes are off."""
    heads = module.num_attention_heads
    if slot.encoder is None or not slot.encoder.active:
        with torch.no_grad():  # what a prefix from this text would be: keys and values as (batch, heads, length, dim)
            slot.seen = tuple(_split(module, proj(hidden_states)) for proj in (module.key_proj, module.value_proj))
        return type(module).forward(module, hidden_states, attention_mask, output_attentions, query_states,
                                    relative_pos, rel_embeddings)
    batch = hidden_states.shape[0]
    query = module.transpose_for_scores(module.query_proj(hidden_states if query_states is None else query_states),
                                        heads)
    key = module.transpose_for_scores(module.key_proj(hidden_states), heads)
    value = module.transpose_for_scores(module.value_proj(hidden_states), heads)
    prefix_key, prefix_value = (t.to(key.dtype).expand(batch, -1, -1, -1).reshape(batch * heads, -1, t.shape[-1])
                                for t in slot.encoder.key_value(slot.index))  # batch-major, as transpose_for_scores
    n = prefix_key.shape[1]
    factor = 1 + sum(term in module.pos_att_type for term in ("c2p", "p2c"))
    scale = torch.sqrt(torch.tensor(query.size(-1), dtype=torch.float) * factor).to(query.dtype)
    scores = torch.bmm(query, torch.cat([prefix_key, key], dim=1).transpose(-1, -2) / scale)
    if module.relative_attention:
        relative = module.disentangled_attention_bias(query, key, relative_pos, module.pos_dropout(rel_embeddings),
                                                      factor)
        if torch.is_tensor(relative):  # 0 when no position term is configured
            scores = scores + F.pad(relative, (n, 0))  # prefix columns: content only
    scores = scores.view(-1, heads, *scores.shape[-2:])
    mask = attention_mask.bool()
    mask = torch.cat([mask.new_ones(*mask.shape[:-1], n), mask], dim=-1)
    probs = module.dropout(torch.softmax(scores.masked_fill(~mask, torch.finfo(query.dtype).min), dim=-1))
    context = torch.bmm(probs.view(-1, *probs.shape[-2:]), torch.cat([prefix_value, value], dim=1))
    context = context.view(batch, heads, -1, context.shape[-1]).transpose(1, 2).reshape(batch, -1, heads *
                                                                                      context.shape[-1])
    return context, (probs if output_attentions else None)


def _split(module: nn.Module, projected: torch.Tensor) -> torch.Tensor:
    """(batch, length, heads * dim) -> (batch, heads, length, dim), detached."""
    batch, length, _ = projected.shape
    return projected.detach().view(batch, length, module.num_attention_heads, -1).transpose(1, 2)
