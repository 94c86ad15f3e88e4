"""Input lengths: the longest input a backbone takes, and how many inputs a ``max_length`` cut."""

from __future__ import annotations

from lightning.pytorch.utilities import rank_zero_info

from lightning_adapters.backbone import resolve

# Position ids of these models start after the pad id (RoBERTa's padding_idx + 1): that many fewer usable positions.
_PAD_OFFSET_TYPES = {"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "roberta-prelayernorm", "longformer",
                     "data2vec-text", "mpnet", "ibert"}


def position_limit(name: str, tokenizer) -> int | None:
    """The longest input backbone ``name`` takes: its position table and its tokenizer's ``model_max_length``,
    whichever is smaller; None when neither says (relative positions, as in T5)."""
    from transformers import AutoConfig

    unset = getattr(tokenizer, "model_max_length", None) is None or tokenizer.model_max_length >= 1_000_000  # 1e30
    limits = [] if unset else [tokenizer.model_max_length]
    try:
        source = resolve(name)
        config = AutoConfig.from_pretrained(source.path, trust_remote_code=False, **source.kwargs())
    except Exception:  # noqa: BLE001 — no readable config (offline hub id, custom code): the tokenizer's limit holds
        config = None
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        offset = (getattr(config, "pad_token_id", None) or 0) + 1 if config.model_type in _PAD_OFFSET_TYPES else 0
        limits.append(positions - offset)
    return min(limits) if limits else None


def fit_max_length(max_length: int, name: str, tokenizer) -> int:
    """``max_length``, capped at what the backbone takes (longer inputs fail inside the model with a tensor-size
    error), with a note when it is capped."""
    limit = position_limit(name, tokenizer)
    if limit is None or max_length <= limit:
        return max_length
    rank_zero_info(f"max_length={max_length} is more than the {limit} positions backbone '{name}' takes: "
                   f"using max_length={limit}")
    return limit


def count_truncated(tokenizer, texts: list[str], truncated: list[list[int]], max_length: int) -> int:
    """How many ``texts`` were cut to fit ``max_length`` (only those that reached it are tokenized again)."""
    full = [text for text, ids in zip(texts, truncated, strict=True) if len(ids) >= max_length]
    if not full:
        return 0
    return sum(len(ids) > max_length for ids in tokenizer(full, verbose=False)["input_ids"])
