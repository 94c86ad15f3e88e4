"""Validation/test splits carved from the training rows when no file gives them, for every DataModule.

Seeded, and either stratified (each stratum — a label, an intent — keeps its share of the rows) or by whole groups (a
SQuAD article's questions never land in two splits, so no context is seen in training and tested on). Row order is
kept in every split. A split that would come out empty, or leave training empty, is refused.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np

from lightning_adapters.errors import UserInputError


def _share(count: int, fraction: float) -> int:
    return math.floor(count * fraction + 0.5)  # round half up: Python's round() goes to even


def held_out(keys: Sequence[Hashable], fraction: float, rng: np.random.Generator,
             whole_groups: bool = False) -> tuple[list[int], list[int]]:
    """Row indices (kept, held out), each in row order, for rows whose strata / groups are ``keys`` (stratified
    keys must also sort: the strata are drawn in sorted order, so the draw does not depend on row order).

    Stratified: round(rows of k × fraction) random rows of each key k (keys in sorted order) are held out.
    Whole groups: round(distinct keys × fraction) random keys (in order of first appearance), with all their rows.
    """
    if whole_groups:
        groups = list(dict.fromkeys(keys))
        chosen = {groups[i] for i in rng.permutation(len(groups))[:_share(len(groups), fraction)]}
        held = {row for row, key in enumerate(keys) if key in chosen}
    else:
        by_key: dict[Hashable, list[int]] = {}
        for row, key in enumerate(keys):
            by_key.setdefault(key, []).append(row)
        held = set()
        for key in sorted(by_key):
            rows = by_key[key]
            held.update(rows[i] for i in rng.permutation(len(rows))[:_share(len(rows), fraction)])
    return [r for r in range(len(keys)) if r not in held], sorted(held)


def _rows(rows: list, indices: list[int]) -> list:
    return [rows[i] for i in indices]


def carve_missing_splits(splits: dict[str, Any], fractions: dict[str, float], seed: int,
                         keys: Callable[[Any], Sequence[Hashable]] = lambda rows: [0] * len(rows), *,
                         whole_groups: bool = False, unit: str = "training rows",
                         take: Callable[[Any, list[int]], Any] = _rows) -> list[str]:
    """Carve each split of ``fractions`` that ``splits`` lacks from ``splits["train"]``, in ``fractions`` order.

    Args:
        splits: split name -> rows (changed in place).
        fractions: split name -> share of the training rows (or groups) to hold out; 0 carves nothing.
        seed: seed of the draw.
        keys: the rows' strata (default: one stratum, a plain random draw) or groups.
        whole_groups: hold out whole groups of ``keys`` instead of a share of each stratum.
        unit: what is counted, for the error message (e.g. "training articles").
        take: the rows at some indices (default: a list's items; override for other row containers).

    Returns the names of the carved splits.
    """
    if "train" not in splits:
        return []
    rng, carved = np.random.default_rng(seed), []
    for split, fraction in fractions.items():
        if split in splits or fraction == 0:
            continue
        train, train_keys = splits["train"], keys(splits["train"])
        kept, held = held_out(train_keys, fraction, rng, whole_groups)
        if not kept or not held:
            count = len(set(train_keys)) if whole_groups else len(train_keys)
            raise UserInputError(f"a {fraction:.0%} {split} split of {count} {unit} would leave an empty split — "
                                 f"pass {split}_file or change {split}_fraction")
        splits[split], splits["train"] = take(train, held), take(train, kept)
        carved.append(split)
    return carved
