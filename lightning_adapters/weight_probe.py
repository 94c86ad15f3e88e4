"""A cheap, dtype-robust identity of a checkpoint's weights: values sampled across its frozen weight matrices.

`lightning_adapters.backbone.fingerprint` stores the probe with every adapter and `check_fingerprint` compares it,
so an adapter is refused on another checkpoint of the same architecture (another seed, another fine-tune).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

PROBE_TENSORS = 6  # matrices sampled besides the input embedding: first, last and evenly between
PROBE_VALUES = 16  # values per matrix (the embedding: 4x as many, rows spread over the whole vocabulary)


def weight_probe(model: nn.Module) -> dict[str, str]:
    """Values sampled from the frozen weight matrices across depth: ``{name: "v1 v2 ..."}`` (4 significant digits).

    Cheap (a few hundred values, no full-model hash) and the same whatever strategy wraps the layers (base
    weights only, ``.base_layer`` dropped from names). Values, not a hash of them, so that `same_probe` can compare
    with a tolerance: a bf16 or fp16 load of the same checkpoint rounds each value (by up to 0.4%), and fp16
    rounding does not round-trip through bf16, so no single rounding would make all three hash alike.
    """
    from lightning_adapters.strategies import adapter_named_parameters  # strategies import backbone, which imports us

    embedding = model.get_input_embeddings().weight
    skip = {id(embedding)} | {id(p) for _, p in adapter_named_parameters(model)}  # by structure, as checkpoints do
    matrices = [(name.replace(".base_layer", ""), p) for name, p in model.named_parameters()
                if id(p) not in skip and p.dim() >= 2 and p.is_floating_point()]
    last, k = len(matrices) - 1, min(PROBE_TENSORS, len(matrices))
    chosen = sorted({round(i * last / max(1, k - 1)) for i in range(k)})
    picks = [("input_embeddings", embedding, 4 * PROBE_VALUES)] + [(*matrices[i], PROBE_VALUES) for i in chosen]
    return {name: " ".join(f"{v:.4g}" for v in _sample(param, count)) for name, param, count in picks}


def _sample(param: torch.Tensor, count: int) -> list[float]:
    """``count`` values at fixed pseudo-random positions (Knuth's multiplicative hash): spread over every row."""
    flat = [(i * 2654435761 + 12345) % param.numel() for i in range(count)]
    index = torch.unravel_index(torch.tensor(flat), param.shape)
    return param.detach()[index].float().tolist()


def same_probe(saved: dict, current: dict[str, str]) -> bool:
    """Whether two `weight_probe` results sample the same tensors with values equal up to low-precision rounding."""
    if set(saved) != set(current):
        return False
    try:
        return all(close_values([float(v) for v in saved[name].split()], [float(v) for v in current[name].split()])
                   for name in current)
    except (AttributeError, ValueError):  # not a string of numbers: a corrupt fingerprint matches nothing
        return False


def close_values(saved: Any, current: list[float]) -> bool:
    """Equal up to bf16 rounding (2**-8 relative) and the 4 printed digits; a tiny absolute slack for fp16."""
    if not isinstance(saved, list) or len(saved) != len(current):
        return False
    try:
        return torch.allclose(torch.tensor(saved, dtype=torch.float64), torch.tensor(current, dtype=torch.float64),
                              rtol=1e-2, atol=1e-4)
    except (TypeError, ValueError, RuntimeError):
        return False
