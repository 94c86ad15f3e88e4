"""Bottleneck adapters over every tiny backbone family, and full fine-tuning (all strategies: strategy contract)."""

from __future__ import annotations

import pytest
import torch
from conftest import FAMILIES, build_model, build_tokenizer, sample_batch
from torch import nn
from transformers import PretrainedConfig

from lightning_adapters.errors import UserInputError
from lightning_adapters.strategies import Bottleneck, BottleneckLayer, adapter_named_parameters, match_target
from lightning_adapters.strategies.targets import OUTPUT_PROJECTIONS, _trace_output_projections

VARIANTS = ["houlsby", "pfeiffer", "parallel"]


def forward(model, family: str, batch: dict) -> torch.Tensor:
    inputs = {k: v for k, v in batch.items() if k != "token_type_ids"}
    if family == "t5":
        inputs["decoder_input_ids"] = batch["input_ids"][:, :4]
    return model(**inputs).last_hidden_state


def adapted(family: str, **kwargs):
    model = build_model(family)
    model.requires_grad_(False)
    Bottleneck(**kwargs).apply(model)
    return model.eval()


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("family", FAMILIES)
def test_identity_at_init_then_adapter_changes_output(family, variant):
    batch = sample_batch(build_tokenizer())
    reference = forward(build_model(family), family, batch)
    model = adapted(family, variant=variant)
    assert torch.allclose(forward(model, family, batch), reference, atol=1e-6, rtol=0)
    for _, param in adapter_named_parameters(model):
        nn.init.normal_(param, std=0.5)
    assert (forward(model, family, batch) - reference).abs().max() > 1e-3


@pytest.mark.parametrize("family", FAMILIES)
def test_placement_per_variant(family):
    counts = {}
    for variant in VARIANTS:
        model = adapted(family, variant=variant)
        counts[variant] = sum(isinstance(m, BottleneckLayer) for m in model.modules())
    layers = {"t5": 2 + 2}.get(family, 2)  # T5: encoder blocks + decoder blocks
    assert counts["pfeiffer"] == counts["parallel"] == layers
    # Houlsby adds one per attention sublayer too (T5's decoder has self- and cross-attention).
    assert counts["houlsby"] == layers + {"t5": 2 + 4}.get(family, 2)


@pytest.mark.parametrize("family", FAMILIES)
def test_only_adapters_get_gradients(family):
    model = adapted(family, variant="houlsby", dropout=0.1)
    model.train()
    batch = sample_batch(build_tokenizer())
    for name, param in adapter_named_parameters(model):
        if name.endswith("up.weight"):
            nn.init.normal_(param, std=0.1)
    forward(model, family, batch).pow(2).mean().backward()
    adapter_ids = {id(p) for _, p in adapter_named_parameters(model)}
    for name, param in model.named_parameters():
        if id(param) in adapter_ids:
            assert param.requires_grad and param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert not param.requires_grad and param.grad is None, name


def test_bottleneck_size_and_parameter_count():
    model = adapted("bert", variant="pfeiffer", reduction_factor=4)
    # per adapter: down 32->8 (+8 bias), up 8->32 (+32 bias); 2 layers
    assert sum(p.numel() for _, p in adapter_named_parameters(model)) == 2 * (32 * 8 + 8 + 8 * 32 + 32)
    model = adapted("bert", variant="pfeiffer", bottleneck_size=3)
    assert all(m.down.out_features == 3 for m in model.modules() if isinstance(m, BottleneckLayer))


def test_parallel_adapter_reads_the_sublayer_input():
    model = adapted("llama", variant="parallel")
    layer = model.get_submodule("layers.0.mlp.down_proj")
    assert isinstance(layer, BottleneckLayer) and layer.parallel and layer.scaling == 4.0
    assert layer.down.in_features == 32  # hidden size: the FFN input, not down_proj's 64-wide input
    seen = {}
    model.get_submodule("layers.0.mlp.gate_proj").register_forward_pre_hook(lambda m, a: seen.update(x=a[0]))
    captured = {}
    layer.down.register_forward_pre_hook(lambda m, a: captured.update(x=a[0]))
    forward(model, "llama", sample_batch(build_tokenizer()))
    assert torch.equal(seen["x"], captured["x"])


@pytest.mark.parametrize("family", [f for f in FAMILIES if f in OUTPUT_PROJECTIONS and f != "t5"])
def test_structural_fallback_agrees_with_the_table(family):
    model = build_model(family)
    table = OUTPUT_PROJECTIONS[model.config.model_type]
    traced = _trace_output_projections(model)
    for kind, pattern in table.items():
        expected = [n for n, _ in model.named_modules() if match_target(n, pattern)]
        assert traced[kind] == expected


def test_explicit_targets_override_the_table():
    model = adapted("bert", variant="pfeiffer", ffn_modules=["layer.1.output.dense"])
    wrapped = [n for n, m in model.named_modules() if isinstance(m, BottleneckLayer)]
    assert wrapped == ["encoder.layer.1.output.dense"]


def test_match_target_semantics():
    assert match_target("encoder.layer.0.attention.self.query", r".*\.query")
    assert not match_target("encoder.layer.0.attention.self.query", r"query")  # regex must match the whole name
    assert match_target("encoder.layer.0.attention.self.query", ["self.query"])
    assert not match_target("encoder.layer.0.attention.self.query", ["elf.query"])  # suffix at a dot boundary


class _NoProjections(nn.Module):
    """An 'architecture' with no Linear layers at all: nothing a bottleneck could wrap."""

    def __init__(self):
        super().__init__()
        self.config = PretrainedConfig(hidden_size=8)
        self.config.model_type = "toy-conv"
        self.embed = nn.Embedding(10, 8)
        self.conv = nn.Conv1d(8, 8, 1)

    @property
    def device(self):
        return self.embed.weight.device

    @property
    def dummy_inputs(self):
        return {"input_ids": torch.tensor([[1, 2, 3]])}

    def forward(self, input_ids):
        return self.conv(self.embed(input_ids).transpose(1, 2))


def test_architecture_without_injection_point_is_refused_by_name():
    with pytest.raises(UserInputError, match=r"_NoProjections \(model_type 'toy-conv'\).*attention_modules"):
        Bottleneck(variant="pfeiffer").apply(_NoProjections())
    with pytest.raises(UserInputError, match="no ffn output projection"):
        Bottleneck(variant="pfeiffer", ffn_modules=r"nothing\.matches").apply(build_model("bert"))


def test_bad_strategy_options_are_refused():
    with pytest.raises(UserInputError, match="unknown bottleneck variant 'compacter'"):
        Bottleneck(variant="compacter")
    with pytest.raises(UserInputError, match="unknown activation"):
        Bottleneck(activation="swish2")


def test_half_precision_base_keeps_fp32_adapters():
    model = build_model("llama").to(torch.bfloat16)
    model.requires_grad_(False)
    Bottleneck(variant="houlsby").apply(model)
    assert all(p.dtype == torch.float32 for _, p in adapter_named_parameters(model))
    out = forward(model, "llama", sample_batch(build_tokenizer()))
    assert out.dtype == torch.bfloat16


def test_full_fine_tuning_trains_and_exports_every_base_weight(model_dirs, tmp_path):
    from safetensors.torch import load_file

    from lightning_adapters import AdapterModule, load_adapter, save_adapter
    from lightning_adapters.adapter_folder import WEIGHTS_NAME
    from lightning_adapters.strategies import FullFineTuning

    module = AdapterModule(model_dirs["llama"], strategy=FullFineTuning(), label_names=["a", "b"], dtype="bfloat16")
    assert all(p.requires_grad and p.dtype == torch.float32 for p in module.parameters())  # fp32 master weights
    assert module.parameter_counts()[0] == module.parameter_counts()[1]
    with torch.no_grad():
        module.backbone.norm.weight.add_(0.5)  # as training would move it
    with pytest.warns(UserWarning, match=r"exports every base weight \(.* MiB in fp32\): the folder is a whole model"):
        save_adapter(module, tmp_path)
    saved = load_file(tmp_path / WEIGHTS_NAME)
    assert set(saved) == {name for name, _ in module.named_parameters()}
    batch = sample_batch(build_tokenizer())
    assert torch.equal(load_adapter(tmp_path).eval()(batch), module.eval()(batch))


def test_benchmarks_fine_tune_fully_through_the_strategy_not_by_hand():
    from pathlib import Path

    recipes = Path(__file__).resolve().parent.parent / "recipes" / "benchmark"
    by_hand = [path.name for path in recipes.glob("*.py") if "requires_grad_(True)" in path.read_text()]
    assert not by_hand, f"{by_hand} unfreeze the backbone by hand — use strategies.FullFineTuning"
