"""The ``layers`` option (`lightning_adapters.strategies.layers`): one meaning for every strategy that places
modules in layers — the indices it resolves to, adapters only in the chosen blocks of every family (both stacks of
T5), PEFT's own ``layers_to_transform``-free loading of the export reproducing our outputs, a save/load round trip,
and one-line refusals."""

from __future__ import annotations

import pytest
import torch
from conftest import build_tokenizer, sample_batch
from peft import PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer
from strategy_table import STRATEGIES, trained
from test_generation import lm_dirs  # noqa: F401 — a fixture: tiny LMs with their LM heads
from transformers import AutoModel

from lightning_adapters import (
    AdapterModule,
    GenerationHead,
    Lora,
    PromptTuning,
    UserInputError,
    load_adapter,
    save_adapter,
)
from lightning_adapters.heads.base import backbone_inputs
from lightning_adapters.peft_export import export_peft
from lightning_adapters.strategies.base import adapter_layers
from lightning_adapters.strategies.layers import block_of, check_layers, resolve
from lightning_adapters.strategies.prefix_attention import Slot, installed_slots

LABELS = ["a", "b"]
PLACED = ["bottleneck", "pfeiffer", "parallel", "lora", "ia3", "prefix"]


@pytest.mark.parametrize(("spec", "expected"), [
    (None, set()), ("all", {0, 1, 2, 3, 4, 5}), (3, {3}), (-1, {5}), ([0, -1], {0, 5}), ("last 2", {4, 5}),
    ("first 2", {0, 1}), ("2:4", {2, 3}), ("-2:", {4, 5}), (":2, -1", {0, 1, 5}), (["0:2", 5], {0, 1, 5}),
    ("::2", None),
])
def test_a_spec_resolves_to_the_indices_it_names(spec, expected):
    if expected is None:  # a step is not part of the grammar
        with pytest.raises(UserInputError, match="cannot read '::2'"):
            resolve(spec, 6, "encoder.layer", "LoRA")
        return
    assert resolve(spec, 6, "encoder.layer", "LoRA") == expected


@pytest.mark.parametrize(("spec", "message"), [
    (6, "index 6 is out of range for the 6 layers of encoder.layer (0..5, or -6..-1)"),
    (-7, "index -7 is out of range"),
    ("last 7", "'last 7' asks for 7 of the 6 layers"),
    ("first 0", "'first 0' asks for 0"),
    ("4:2", "the slice '4:2' holds none of the 6 layers"),
])
def test_out_of_range_is_one_line_naming_the_stack(spec, message):
    with pytest.raises(UserInputError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        resolve(spec, 6, "encoder.layer", "LoRA")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("spec", "message"), [
    ([], "layers is an empty list"), ("top 3", "cannot read 'top 3'"), (True, "is neither an index"),
    (1.5, "is neither an index"), ([0, None], "is neither an index"),
])
def test_an_unreadable_spec_is_refused_when_the_strategy_is_built(spec, message):
    check_layers(None, "LoRA")
    for name in PLACED:
        with pytest.raises(UserInputError, match=message):
            STRATEGIES[name].build(layers=spec)


def places(module: AdapterModule, name: str) -> list[tuple[str, int]]:
    """(stack, block index) of every place the strategy put something in."""
    backbone = module.backbone
    if name == "prefix":  # the attention modules holding a slot
        routed = [path for path, m in backbone.named_modules() if any(isinstance(v, Slot) for v in vars(m).values())]
        assert len(routed) == len(installed_slots(backbone))
        return [block_of(backbone, path)[:2] for path in routed]
    return [block_of(backbone, path)[:2] for path, _ in adapter_layers(backbone)]


@pytest.mark.parametrize("family", ["bert", "distilbert", "gpt2", "llama", "t5"])
@pytest.mark.parametrize("name", PLACED)
def test_adapters_go_only_into_the_chosen_layers(family, name, model_dirs):
    build = lambda **kw: AdapterModule(model_dirs[family], strategy=STRATEGIES[name].build(**kw), label_names=LABELS)  # noqa: E731
    every = places(build(), name)
    last = places(build(layers="last 1"), name)
    first = places(build(layers=[0]), name)
    assert last == [place for place in every if place[1] == 1]  # 2 layers per stack in the tiny models
    assert first == [place for place in every if place[1] == 0]
    assert last and first and len(last) + len(first) == len(every)


def test_t5_indices_count_in_each_stack(lm_dirs):  # noqa: F811
    module = AdapterModule(lm_dirs["t5"], strategy=Lora(r=2, layers=[-1]), head=GenerationHead())
    stacks = {place[0]: place[1] for place in places(module, "lora")}
    assert stacks == {"encoder.block": 1, "decoder.block": 1}


@pytest.mark.parametrize("method", ["lora", "ia3"])
@pytest.mark.parametrize("family", ["bert", "llama"])
def test_peft_loads_the_export_of_a_layer_subset_and_gives_our_hidden_states(family, method, model_dirs, tmp_path):
    module = trained(AdapterModule(model_dirs[family], strategy=STRATEGIES[method].build(layers="last 1"),
                                   label_names=LABELS).eval())
    batch = sample_batch(build_tokenizer())
    ours = module.backbone(**backbone_inputs(batch, module.backbone)).last_hidden_state
    export_peft(module, tmp_path)
    peft_model = PeftModel.from_pretrained(AutoModel.from_pretrained(model_dirs[family]), tmp_path).eval()
    wrapped = [name for name, child in peft_model.named_modules() if isinstance(child, BaseTunerLayer)]
    assert wrapped and all(".1." in name for name in wrapped), wrapped  # nothing in layer 0
    theirs = peft_model(**backbone_inputs(batch, module.backbone)).last_hidden_state
    assert torch.allclose(theirs, ours, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", PLACED)
def test_layers_survive_a_save_and_load(name, model_dirs, tmp_path):
    module = trained(AdapterModule(model_dirs["bert"], strategy=STRATEGIES[name].build(layers=[-1]),
                                   label_names=LABELS).eval())
    loaded = load_adapter(save_adapter(module, tmp_path / name)).eval()
    assert loaded.strategy.layers == [-1] and places(loaded, name) == places(module, name)
    batch = sample_batch(build_tokenizer())
    with torch.no_grad():
        assert torch.allclose(loaded(batch), module(batch), atol=1e-6)


def test_prompt_tuning_has_no_layers_to_choose():
    with pytest.raises(TypeError):
        PromptTuning(num_virtual_tokens=2, layers=[0])
