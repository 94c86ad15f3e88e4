r"""Merging LoRA adapters into a new one: a weighted sum of their updates, or TIES-merging.

Each LoRA adapter ``i`` adds ``ΔW_i = s_i B_i A_i`` at the same places. A merge with weights ``w_i`` builds one new
LoRA adapter per place:

- ``linear``: ``ΔW = Σ w_i ΔW_i``, exactly, as a LoRA of rank ``Σ r_i`` (``A`` = the ``A_i`` stacked, ``B`` = the
  ``w_i s_i B_i`` side by side; PEFT calls this combination ``cat``). With equal weights summing to 1: the average.
- ``ties``: TIES-merging (Yadav et al. 2023) of the ``w_i ΔW_i``: keep each update's ``density`` largest-magnitude
  entries, elect each entry's sign by total mass, and average the kept entries that agree with it; the merged
  matrix is stored as a LoRA of rank ``rank`` (default ``Σ r_i``) by a truncated SVD, exact when ``rank`` reaches the
  matrix's rank.

Paper: https://arxiv.org/abs/2306.01708 (TIES)
"""

from __future__ import annotations

from typing import Literal

import torch

from lightning_adapters.errors import UserInputError

Combination = Literal["linear", "ties"]


def ties(deltas: list[torch.Tensor], density: float) -> torch.Tensor:
    """TIES-merge of (already weighted) updates: trim to ``density``, elect signs by total mass, disjoint mean."""
    stacked = torch.stack([d.float() for d in deltas])
    keep = max(1, round(density * stacked[0].numel()))
    trimmed = torch.zeros_like(stacked)
    for i, delta in enumerate(stacked):
        flat = delta.flatten()
        top = flat.abs().topk(keep).indices
        trimmed[i].view(-1)[top] = flat[top]
    sign = torch.sign(trimmed.sum(0))
    agree = (torch.sign(trimmed) == sign) & (trimmed != 0)
    count = agree.sum(0).clamp(min=1)
    return (trimmed * agree).sum(0) / count


def combine(factors: list[tuple[torch.Tensor, torch.Tensor, float]], weights: list[float], combination: Combination,
            density: float | None, rank: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) of the merged update at one place, for a LoRA layer with scaling 1; ``factors``: (A_i, B_i, s_i)."""
    if combination == "linear":
        a = torch.cat([a.float() for a, _, _ in factors], dim=0)
        b = torch.cat([w * s * b.float() for (_, b, s), w in zip(factors, weights, strict=True)], dim=1)
        return a, b
    merged = ties([w * s * (b.float() @ a.float()) for (a, b, s), w in zip(factors, weights, strict=True)],
                  density if density is not None else 0.2)
    u, singular, vh = torch.linalg.svd(merged, full_matrices=False)
    r = rank or sum(a.shape[0] for a, _, _ in factors)
    a, b = vh[:r], u[:, :r] * singular[:r]
    missing = r - a.shape[0]  # a rank above the matrix's size: zero rows, so every place has rank r
    return torch.nn.functional.pad(a, (0, 0, 0, missing)), torch.nn.functional.pad(b, (0, missing))


def check_merge(names: list[str], weights: list[float] | None, combination: str, density: float | None,
                rank: int | None) -> list[float]:
    """The weights to use (default: equal, summing to 1), after refusing settings that cannot work."""
    if len(names) < 2 or len(set(names)) != len(names):
        raise UserInputError(f"merging needs two or more different LoRA adapters, got {names!r}")
    if combination not in ("linear", "ties"):
        raise UserInputError(f"unknown combination_type '{combination}' — use linear or ties")
    weights = [1 / len(names)] * len(names) if weights is None else [float(w) for w in weights]
    if len(weights) != len(names):
        raise UserInputError(f"{len(weights)} weights for {len(names)} adapters — give one weight per adapter")
    if density is not None and (combination != "ties" or not 0 < density <= 1):
        raise UserInputError(f"density {density} needs combination_type ties and a value in (0, 1] — e.g. 0.2")
    if rank is not None and (combination != "ties" or rank < 1):
        raise UserInputError(f"rank {rank} needs combination_type ties and a positive value (linear is exact at the "
                             "sum of the ranks)")
    return weights
