"""Carving missing validation/test splits (every DataModule): stratified or by whole groups, seeded, in row order."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from lightning_adapters.data.splits import carve_missing_splits, held_out
from lightning_adapters.errors import UserInputError

KEYS = ["a"] * 10 + ["b"] * 4 + ["c"] * 6


def test_stratified_hold_out_keeps_each_stratum_share_and_row_order():
    kept, held = held_out(KEYS, 0.25, np.random.default_rng(3))
    assert Counter(KEYS[r] for r in held) == {"a": 3, "b": 1, "c": 2}  # round half up per stratum: 2.5 -> 3
    assert held == [0, 6, 9, 11, 17, 18]  # the draw is pinned: carved splits of existing data must not move
    assert sorted(kept + held) == list(range(20)) and kept == sorted(kept)
    assert (kept, held) == held_out(KEYS, 0.25, np.random.default_rng(3))


def test_whole_group_hold_out_never_splits_a_group():
    kept, held = held_out(KEYS, 0.34, np.random.default_rng(3), whole_groups=True)
    assert held == [14, 15, 16, 17, 18, 19]  # one of three groups: all of "c"
    assert not {KEYS[r] for r in held} & {KEYS[r] for r in kept}


def test_carving_fills_only_missing_splits_and_refuses_empty_ones():
    splits = {"train": list(range(20)), "validation": [99]}
    assert carve_missing_splits(splits, {"test": 0.1, "validation": 0.5}, seed=0) == ["test"]
    assert splits["validation"] == [99] and len(splits["test"]) == 2
    assert sorted(splits["train"] + splits["test"]) == list(range(20))
    assert carve_missing_splits({"validation": [1]}, {"test": 0.5}, seed=0) == []  # nothing to carve from
    with pytest.raises(UserInputError, match=r"a 50% validation split of 1 training articles would leave an empty "
                                             r"split — pass validation_file or change validation_fraction"):
        carve_missing_splits({"train": [1, 2]}, {"validation": 0.5}, 0, keys=lambda rows: ["x"] * len(rows),
                             whole_groups=True, unit="training articles")
