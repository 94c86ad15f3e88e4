"""Several named adapters on one frozen base (issue 12, step 1: the strategy level).

A second adapter wraps the places the first already wraps (outermost), so the first one's computation never changes:
with the second switched off, the first's outputs are bit-identical (zero forgetting by construction). Each adapter's
weights, named canonically, are exactly what the same adapter has alone on the base.
"""

from __future__ import annotations

import itertools
import re

import pytest
import torch
from conftest import build_model, build_tokenizer, sample_batch
from strategy_table import STRATEGIES
from test_strategies import forward

from lightning_adapters import AdapterModule, ClassificationHead, UserInputError, load_adapter, save_adapter
from lightning_adapters.strategies import FullFineTuning, adapter_named_parameters
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


# ---- the module's verbs (AdapterHub's names) -------------------------------------------------------------------------
SENTIMENT, INTENTS, TOPICS = ["negative", "neutral", "positive"], ["card", "refund"], ["a", "b", "c", "d"]


def labelled_batch(labels: int, seed: int) -> dict:
    batch = sample_batch(build_tokenizer())
    generator = torch.Generator().manual_seed(seed)
    batch["labels"] = torch.randint(0, labels, (len(batch["input_ids"]),), generator=generator)
    return batch


def train(module, batch: dict, steps: int = 3) -> None:
    """A few AdamW steps on what the module trains now (dropout on), as a Trainer would."""
    optimizer = torch.optim.AdamW([p for _, p in module.trainable_parameters()], lr=1e-2)
    module.train()
    for _ in range(steps):
        module.task_head.loss(module(batch), batch).backward()
        optimizer.step()
        optimizer.zero_grad()
    module.eval()


def logits(module, batch: dict) -> torch.Tensor:
    with torch.no_grad():
        return module(batch)


def test_continual_learning_bottleneck_then_lora_then_prefix_forgets_nothing(model_dirs):
    """Train A (bottleneck), then B (LoRA), then C (prefix): A's and B's logits stay torch.equal to what they were
    right after each was trained; each trains only its own weights; a checkpoint holds only the training adapter."""
    module = AdapterModule(model_dirs["bert"], strategy=STRATEGIES["bottleneck"].build(), label_names=SENTIMENT)
    batches = {"default": labelled_batch(3, 0), "intent": labelled_batch(2, 1), "topic": labelled_batch(4, 2)}
    train(module, batches["default"])
    after = {"default": logits(module, batches["default"])}
    for name, kind, labels in (("intent", "lora", INTENTS), ("topic", "prefix", TOPICS)):
        module.add_adapter(name, STRATEGIES[kind].build(), ClassificationHead(), labels)
        module.train_adapter(name)
        trained = set(module.trainable_names())
        assert trained and all(f".{name}." in n or n.startswith("backbone.") for n in trained)
        assert set(module.state_dict()) == trained  # the checkpoint: this adapter and its head only
        assert {n for n in trained if n.startswith("backbone.")} == {
            f"backbone.{path}" for path, _ in adapter_named_parameters(module.backbone, name)}
        train(module, batches[name])
        after[name] = logits(module, batches[name])
        assert after[name].shape[-1] == len(labels)
        for earlier in after:
            module.set_active_adapters(earlier)
            assert torch.equal(logits(module, batches[earlier]), after[earlier]), earlier
    assert module.adapter_names == ["default", "intent", "topic"]


def test_each_adapter_saves_as_if_it_were_alone_and_loads_onto_another_module(model_dirs, tmp_path):
    module = AdapterModule(model_dirs["bert"], strategy=STRATEGIES["lora"].build(), label_names=SENTIMENT)
    train(module, labelled_batch(3, 0))  # the default adapter no longer computes the identity
    module.add_adapter("intent", STRATEGIES["lora"].build(), ClassificationHead(), INTENTS)  # same places, nested
    module.train_adapter("intent")
    batch = labelled_batch(2, 1)
    train(module, batch)
    expected = logits(module, batch)
    folder = save_adapter(module, tmp_path / "intent", name="intent")
    alone = load_adapter(folder)  # the folder is an ordinary single-adapter folder
    assert alone.label_names == INTENTS
    torch.testing.assert_close(logits(alone.eval(), batch), expected, atol=1e-5, rtol=1e-5)
    other = AdapterModule(model_dirs["bert"], strategy=STRATEGIES["ia3"].build(), label_names=SENTIMENT)
    train(other, labelled_batch(3, 0))
    other.load_adapter(folder, "intent")
    assert other.adapter_names == ["default", "intent"] and other.labels_of("intent") == INTENTS
    other.set_active_adapters("intent")
    torch.testing.assert_close(logits(other.eval(), batch), expected, atol=1e-5, rtol=1e-5)
    default_folder = save_adapter(module, tmp_path / "default")  # name defaults to the module's own adapter
    assert load_adapter(default_folder).label_names == SENTIMENT


def test_deleting_an_adapter_restores_the_module_without_it(model_dirs):
    module = AdapterModule(model_dirs["bert"], strategy=STRATEGIES["pfeiffer"].build(), label_names=SENTIMENT)
    batch = labelled_batch(3, 0)
    before = logits(module.eval(), batch)
    paths = sorted(name for name, _ in module.backbone.named_parameters())
    module.add_adapter("extra", STRATEGIES["lora"].build(), ClassificationHead(), INTENTS)
    module.set_active_adapters(["default", "extra"])
    module.delete_adapter("extra")
    assert module.adapter_names == ["default"] and module.active_adapters == ["default"]
    assert sorted(name for name, _ in module.backbone.named_parameters()) == paths
    assert torch.equal(logits(module, batch), before)


def test_bad_adapter_names_and_requests_are_refused_in_one_line(model_dirs, tmp_path):
    module = AdapterModule(model_dirs["bert"], strategy=STRATEGIES["lora"].build(), label_names=SENTIMENT)
    module.add_adapter("intent", STRATEGIES["ia3"].build(), ClassificationHead(), INTENTS)
    cases = [
        (lambda: module.train_adapter("nope"), "no adapter named 'nope' — this module has default, intent"),
        (lambda: module.set_active_adapters(["default", "nope"]), "no adapter named 'nope'"),
        (lambda: module.add_adapter("intent", STRATEGIES["lora"].build()), "an adapter named 'intent' already exists"),
        (lambda: module.add_adapter("a.b", STRATEGIES["lora"].build()), "adapter name 'a.b' must be a word"),
        (lambda: module.add_adapter("dup", STRATEGIES["lora"].build(), ClassificationHead(), ["x", "x"]),
         "repeat a label"),
        (lambda: module.add_adapter("full", FullFineTuning()), "not FullFineTuning"),
        (lambda: module.delete_adapter("default"), "cannot be deleted"),
        (lambda: module.set_active_adapters([]), "at least one adapter name"),
    ]
    for call, message in cases:
        with pytest.raises(UserInputError, match=re.escape(message)) as caught:
            call()
        assert "\n" not in str(caught.value)
    assert module.adapter_names == ["default", "intent"]  # nothing half-added


def test_an_adapter_for_another_base_is_refused_and_nothing_is_added(model_dirs, tmp_path):
    twin_dir = tmp_path / "twin"
    build_model("bert", seed=1).save_pretrained(twin_dir)
    build_tokenizer().save_pretrained(twin_dir)
    folder = save_adapter(AdapterModule(str(twin_dir), strategy=STRATEGIES["lora"].build(), label_names=INTENTS),
                          tmp_path / "twin-adapter")
    module = AdapterModule(model_dirs["bert"], strategy=STRATEGIES["lora"].build(), label_names=SENTIMENT)
    paths = sorted(name for name, _ in module.named_parameters())
    with pytest.raises(UserInputError, match="base model"):
        module.load_adapter(folder, "intent")
    assert module.adapter_names == ["default"] and sorted(name for name, _ in module.named_parameters()) == paths


def test_weights_keep_their_alone_names_under_several_later_adapters():
    """Three adapters at one place: the innermost one's weights sit two ``base_layer`` steps deep, and are still
    named (and exported) as they are alone on the base."""
    model = build_model("bert").requires_grad_(False)
    for i, name in enumerate(("a", "b", "c")):
        add(model, "lora", name, seed=i)
    alone = build_model("bert").requires_grad_(False)
    add(alone, "lora", "a", seed=0)
    assert any(".base_layer.base_layer." in name for name, _ in adapter_named_parameters(model, "a"))
    assert set(adapter_state_dict(model, "a")) == set(adapter_state_dict(alone, "a"))
