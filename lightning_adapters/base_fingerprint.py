"""The identity of a base model, stored with every adapter and checkpoint and checked before any weight loads.

`fingerprint` pins the architecture (the config) and the checkpoint (`weight_probe`: a cheap, dtype-robust sample of
values across the frozen weight matrices), so an adapter is refused on another checkpoint of the same architecture
(another seed, another fine-tune); `check_fingerprint` compares two.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import torch
from torch import nn

from lightning_adapters.backbone import alias_for
from lightning_adapters.errors import UserInputError
from lightning_adapters.strategies.base import adapter_named_parameters

PROBE_TENSORS = 6  # matrices sampled besides the input embedding: first, last and evenly between
PROBE_VALUES = 16  # values per matrix (the embedding: 4x as many, rows spread over the whole vocabulary)


def weight_probe(model: nn.Module) -> dict[str, str]:
    """Values sampled from the frozen weight matrices across depth: ``{name: "v1 v2 ..."}`` (4 significant digits).

    Cheap (a few hundred values, no full-model hash) and the same whatever strategy wraps the layers (base
    weights only, ``.base_layer`` dropped from names). Values, not a hash of them, so that `same_probe` can compare
    with a tolerance: a bf16 or fp16 load of the same checkpoint rounds each value (by up to 0.4%), and fp16
    rounding does not round-trip through bf16, so no single rounding would make all three hash alike.
    """
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


def fingerprint(model: nn.Module) -> dict:
    """Identity of a base model, saved with every adapter and checked on load (against the one taken at init: the
    base is frozen, and under FSDP its weights are later shards).

    The config (without paths, versions and dtype) pins the architecture; ``weights`` pins the checkpoint: values
    sampled across the frozen weights (`weight_probe`). ``embedding_probe`` (embedding rows 0-7, often [PAD] and
    [unused] rows that fine-tuning never changes) is the old, weak probe, kept so older releases read new folders.
    """
    config = model.config.to_dict()
    for key in ("_name_or_path", "transformers_version", "torch_dtype", "dtype", "architectures", "_commit_hash",
                "id2label", "label2id", "pad_token_id", "use_cache", "output_hidden_states", "output_attentions",
                "return_dict", "quantization_config"):
        config.pop(key, None)
    embedding = model.get_input_embeddings().weight.detach()
    probe = embedding[:8].float().sum(dim=-1).tolist()
    return {
        "version": 2,
        "name_or_path": alias_for(model.config._name_or_path),
        "model_type": model.config.model_type,
        "config_json": json.dumps(config, sort_keys=True, default=str),
        "embedding_probe": [round(value, 6) for value in probe],
        "weights": weight_probe(model),
    }


def check_fingerprint(saved: dict, current: dict, where: str) -> None:
    """Raise unless fingerprints ``saved`` and ``current`` (both from `fingerprint`) name the same base model.

    A fingerprint without ``weights`` (written before version 2) is still accepted on its weak embedding probe,
    with a warning to save it again.
    """
    if not isinstance(saved, dict) or not isinstance(saved.get("weights", {}), dict):
        raise UserInputError(f"{where} has a corrupt base-model fingerprint — save the adapter again")
    if "weights" in saved:
        same_weights = same_probe(saved["weights"], current["weights"])
    else:
        warnings.warn(f"{where} carries an old, weak base-model fingerprint (embedding rows 0-7 only) — save it "
                      "again to record the stronger one", stacklevel=3)
        same_weights = close_values(saved.get("embedding_probe"), current["embedding_probe"])
    if not (saved.get("config_json") == current["config_json"] and same_weights):
        raise UserInputError(f"{where} was trained on base model '{saved.get('name_or_path')}' "
                             f"({saved.get('model_type')}), not on '{current['name_or_path']}' "
                             f"({current['model_type']}) — load it onto the base it was trained on")
