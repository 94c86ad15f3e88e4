"""Several named adapters on one frozen base (issue 12, step 1: the strategy level).

A second adapter wraps the places the first already wraps (outermost), so the first one's computation never changes:
with the second switched off, the first's outputs are bit-identical (zero forgetting by construction). Each adapter's
weights, named canonically, are exactly what the same adapter has alone on the base.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import build_model, build_tokenizer, sample_batch
from strategy_table import STRATEGIES
from test_strategies import forward

from lightning_adapters import UserInputError
from lightning_adapters.strategies import adapter_named_parameters
from lightning_adapters.strategies.base import adapter_layers, adapter_state_dict, set_active, tag_new_layers

KINDS = ["bottleneck", "pfeiffer", "parallel", "lora", "ia3", "prompt", "prefix"]
ONCE_PER_MODEL = {"prompt", "prefix"}  # one prompt / one set of prefixes per model (for now)
PAIRS = [(a, b) for a, b in itertools.product(KINDS, KINDS) if not (a == b and a in ONCE_PER_MODEL)]


def add(model, kind: str, name: str, seed: int) -> None:
    """Apply strategy ``kind`` as adapter ``name`` and give its weights random values (they start as the identity)."""
    before = {id(layer) for _, layer in adapter_layers(model)}
    STRATEGIES[kind].build().apply(model)
    assert tag_new_layers(model, before, name)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in adapter_named_parameters(model, name):
            param.add_(0.1 * torch.randn(param.shape, generator=generator))


@pytest.mark.parametrize(("first", "second"), PAIRS, ids=[f"{a}-then-{b}" for a, b in PAIRS])
@pytest.mark.parametrize("family", ["bert", "llama"])
def test_a_second_adapter_leaves_the_first_bit_identical(family, first, second):
    batch = sample_batch(build_tokenizer())
    model = build_model(family).requires_grad_(False).eval()
    base = forward(model, family, batch)
    add(model, first, "a", seed=1)
    with_a = forward(model, family, batch)
    assert not torch.allclose(with_a, base)
    add(model, second, "b", seed=2)
    assert not torch.allclose(forward(model, family, batch), with_a)  # both on: b changes the outputs

    set_active(model, {"a"})
    assert torch.equal(forward(model, family, batch), with_a)  # a is untouched, bit for bit
    set_active(model, set())
    assert torch.equal(forward(model, family, batch), base)  # all off: the base model

    set_active(model, {"b"})  # b alone equals b applied to a fresh base, with b's saved (canonical) weights
    alone = build_model(family).requires_grad_(False).eval()
    add(alone, second, "b", seed=3)
    alone_state = adapter_state_dict(alone, "b")
    assert set(adapter_state_dict(model, "b")) == set(alone_state)
    with torch.no_grad():
        for name, param in adapter_named_parameters(alone, "b"):
            param.copy_(adapter_state_dict(model, "b")[name])
    torch.testing.assert_close(forward(model, family, batch), forward(alone, family, batch), atol=1e-5, rtol=1e-5)


def test_a_second_prompt_or_prefix_is_refused_for_now():
    for kind in ONCE_PER_MODEL:
        model = build_model("bert").requires_grad_(False)
        add(model, kind, "a", seed=1)
        with pytest.raises(UserInputError, match="once"):
            STRATEGIES[kind].build().apply(model)
