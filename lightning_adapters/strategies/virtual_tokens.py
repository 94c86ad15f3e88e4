"""What prompt tuning and prefix tuning share: virtual tokens in front of the input.

Where the KV cache is, the positions the text gets after the virtual tokens, how long an input the position
embeddings allow, and the token ids an ``init_text`` initialisation starts from.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from lightning_adapters.backbone import load_tokenizer
from lightning_adapters.errors import UserInputError

_ROBERTA_LIKE = {"roberta", "xlm-roberta", "camembert", "longformer"}  # positions start at pad_token_id + 1

# The KV cache argument was ``past_key_values`` up to transformers 5.2x and is ``cache`` since; accept either.
_CACHE_ARGS = ("cache", "past_key_values")


def kv_cache(inputs: dict[str, Any]) -> Any:
    return next((inputs[key] for key in _CACHE_ARGS if inputs.get(key) is not None), None)


def positions_along_mask(inputs: dict[str, Any], length: int, offset: int) -> tuple[torch.Tensor, int]:
    """Decoder position ids ``offset + (earlier unmasked tokens)`` for the last ``length`` input tokens (the next
    ``length`` positions after the KV cache without a 2-D mask), and one past the largest position they can hold."""
    mask = inputs.get("attention_mask")
    if mask is not None and mask.dim() == 2:
        return offset + mask.long().cumsum(-1)[:, -length:] - 1, offset + mask.shape[1]
    tokens = inputs.get("input_ids") if inputs.get("input_ids") is not None else inputs["inputs_embeds"]
    past = kv_cache(inputs)
    start = offset + (past.get_seq_length() if past is not None else 0)
    return torch.arange(start, start + length, device=tokens.device)[None], start + length


def max_input_length(config: Any) -> int | None:
    """Longest input the position embeddings allow (RoBERTa-likes reserve ``pad_token_id + 1`` positions)."""
    limit = getattr(config, "max_position_embeddings", None)
    if not isinstance(limit, int):
        return None
    if getattr(config, "model_type", None) in _ROBERTA_LIKE:
        limit -= (config.pad_token_id or 0) + 1
    return limit


def check_init_text(method: str, init_text: str | None, tokenizer: str | None) -> None:
    if init_text is not None and tokenizer is None:
        raise UserInputError(f"{method} init_text needs the tokenizer to read it with — set tokenizer to the "
                             "backbone's name (alias, folder or hub id)")


def init_token_ids(method: str, init_text: str, tokenizer: str, n: int, vocab_size: int) -> list[int]:
    """The ``n`` token ids an ``init_text`` initialisation starts from: its tokens, repeated or truncated to ``n``."""
    ids = load_tokenizer(tokenizer)(init_text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise UserInputError(f"{method} init_text {init_text!r} has no tokens — pass a non-empty text")
    if max(ids) >= vocab_size:
        raise UserInputError(f"{method}: the tokenizer '{tokenizer}' gives token id {max(ids)}, beyond this model's "
                             f"{vocab_size} embeddings — set tokenizer to the backbone's own")
    return (ids * math.ceil(n / len(ids)))[:n]
