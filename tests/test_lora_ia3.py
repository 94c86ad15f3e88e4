"""LoRA and IA3 over every tiny family: identity at init, exact merge/unmerge, gradients, targets, dtypes, refusals,
adapter-folder round trip, and a numerical cross-check against PEFT itself."""

from __future__ import annotations

import pytest
import torch
from conftest import FAMILIES, build_model, build_tokenizer, sample_batch
from peft import IA3Config, LoraConfig, get_peft_model
from test_strategies import forward
from torch import nn

from lightning_adapters import AdapterModule, UserInputError, load_adapter, save_adapter
from lightning_adapters.strategies import (
    IA3,
    Bottleneck,
    IA3Layer,
    Lora,
    LoraLayer,
    adapter_named_parameters,
    merge_adapters,
    unmerge_adapters,
)

METHODS = {"lora": lambda: Lora(r=4, alpha=8), "ia3": lambda: IA3()}


def frozen(family: str) -> nn.Module:
    model = build_model(family)
    model.requires_grad_(False)  # the reference is frozen too: T5's kernels differ by ~1e-7 with and without grad
    return model.eval()


def adapted(family: str, strategy) -> nn.Module:
    model = frozen(family)
    strategy.apply(model)
    return model


def randomize(model: nn.Module, seed: int = 1) -> None:
    """LoRA A and B ~ N(0, 0.3); IA3 vectors ~ N(1, 0.3), so that every adapter visibly changes the output."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in adapter_named_parameters(model):
            param.copy_(torch.randn_like(param) * 0.3 + (1.0 if name.endswith("ia3_l") else 0.0))


def wrapped(model: nn.Module, kind: type) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, kind)]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", FAMILIES)
def test_identity_at_init_then_adapters_change_the_output(family, method):
    batch = sample_batch(build_tokenizer())
    reference = forward(frozen(family), family, batch)
    model = adapted(family, METHODS[method]())
    assert torch.allclose(forward(model, family, batch), reference, atol=1e-6, rtol=0)
    randomize(model)
    assert (forward(model, family, batch) - reference).abs().max() > 1e-3


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", FAMILIES)
def test_merge_is_exact_and_unmerge_restores_the_base(family, method):
    batch = sample_batch(build_tokenizer())
    model = adapted(family, METHODS[method]())
    randomize(model)
    before = {name: param.detach().clone() for name, param in model.named_parameters()}
    expected = forward(model, family, batch)
    merge_adapters(model)
    touched = {name for name, param in model.named_parameters() if not torch.equal(param, before[name])}
    assert touched and all(".base_layer." in name for name in touched)
    assert torch.allclose(forward(model, family, batch), expected, atol=1e-5, rtol=0)
    with pytest.raises(UserInputError, match="already merged"):
        merge_adapters(model)
    unmerge_adapters(model)
    for name, param in model.named_parameters():
        if name in touched:
            assert torch.allclose(param, before[name], atol=1e-6, rtol=0), name
        else:
            assert torch.equal(param, before[name]), name
    assert torch.allclose(forward(model, family, batch), expected, atol=1e-5, rtol=0)
    with pytest.raises(UserInputError, match="not merged"):
        unmerge_adapters(model)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", ["bert", "gpt2", "llama", "t5"])
def test_only_adapters_get_gradients(family, method):
    model = adapted(family, Lora(r=4, dropout=0.1) if method == "lora" else IA3())
    model.train()
    randomize(model)
    forward(model, family, sample_batch(build_tokenizer())).pow(2).mean().backward()
    adapter_ids = {id(p) for _, p in adapter_named_parameters(model)}
    assert adapter_ids
    for name, param in model.named_parameters():
        if id(param) in adapter_ids:
            assert param.requires_grad and param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert not param.requires_grad and param.grad is None, name


def test_lora_scaling_and_parameter_count():
    model = adapted("bert", Lora(r=4, alpha=8))
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    assert wrapped(model, LoraLayer) == [f"encoder.layer.{i}.attention.self.{p}" for i in (0, 1) for p in ("query",
                                                                                                            "value")]
    assert all(layer.scaling == 2.0 for layer in layers)
    assert sum(p.numel() for _, p in adapter_named_parameters(model)) == 4 * (32 * 4 + 4 * 32)
    rs = adapted("bert", Lora(r=4, alpha=8, use_rslora=True))
    assert all(m.scaling == 4.0 for m in rs.modules() if isinstance(m, LoraLayer))  # alpha / sqrt(r)


def test_all_linear_covers_the_blocks_but_no_pooler_or_head():
    model = adapted("bert", Lora(target_modules="all-linear"))
    names = wrapped(model, LoraLayer)
    assert len(names) == 2 * 6 and not any("pooler" in n for n in names)  # q, k, v, attn out, intermediate, out
    gpt2 = adapted("gpt2", Lora(target_modules="all-linear"))
    assert [n.split(".", 2)[2] for n in wrapped(gpt2, LoraLayer)][:4] == ["attn.c_attn", "attn.c_proj", "mlp.c_fc",
                                                                          "mlp.c_proj"]


def test_exclusion_and_regex_targets():
    model = adapted("llama", Lora(target_modules="all-linear", exclude_modules=["v_proj", "mlp.down_proj"]))
    names = wrapped(model, LoraLayer)
    assert len(names) == 2 * 5 and not any(n.endswith(("v_proj", "down_proj")) for n in names)
    model = adapted("llama", Lora(target_modules=r".*\.self_attn\.[qk]_proj", exclude_modules=r"layers\.0\..*"))
    assert wrapped(model, LoraLayer) == ["layers.1.self_attn.q_proj", "layers.1.self_attn.k_proj"]


def test_ia3_places_vectors_on_keys_values_and_ffn_input():
    bert = adapted("bert", IA3())
    layers = dict((n, m) for n, m in bert.named_modules() if isinstance(m, IA3Layer))
    assert sorted(layers) == sorted(f"encoder.layer.{i}.{p}" for i in (0, 1)
                                    for p in ("attention.self.key", "attention.self.value", "output.dense"))
    ffn = layers["encoder.layer.0.output.dense"]
    assert ffn.feedforward and ffn.ia3_l.shape == (64,)  # the intermediate activation, not the output
    assert not layers["encoder.layer.0.attention.self.key"].feedforward
    model = adapted("llama", IA3(target_modules=["k_proj", "down_proj"], feedforward_modules=["down_proj"]))
    assert [type(model.get_submodule(f"layers.0.{n}")).__name__ for n in ("self_attn.k_proj", "self_attn.v_proj")] \
        == ["IA3Layer", "Linear"]
    assert model.get_submodule("layers.0.mlp.down_proj").feedforward
    model = adapted("llama", IA3(target_modules=["k_proj"], feedforward_modules=["down_proj"]))
    assert model.get_submodule("layers.1.mlp.down_proj").feedforward  # feed-forward modules are wrapped too
    model = adapted("llama", IA3(exclude_modules=["down_proj"]))
    assert len(wrapped(model, IA3Layer)) == 4 and not any(m.feedforward for m in model.modules()
                                                          if isinstance(m, IA3Layer))


def test_ia3_scales_only_keys_and_values_of_gpt2_fused_projection():
    model = adapted("gpt2", IA3())
    layer = model.get_submodule("h.0.attn.c_attn")
    assert layer.span == (32, 96) and layer.ia3_l.shape == (64,)
    randomize(model)
    x = torch.randn(2, 5, 32)
    base, scaled = layer.base_layer(x), layer(x)
    assert torch.equal(scaled[..., :32], base[..., :32])  # queries untouched
    assert torch.allclose(scaled[..., 32:], base[..., 32:] * layer.ia3_l, atol=1e-6)
    assert model.get_submodule("h.0.mlp.c_proj").feedforward


@pytest.mark.parametrize("method", METHODS)
def test_half_precision_base_keeps_fp32_adapters(method):
    model = build_model("llama").to(torch.bfloat16)
    model.requires_grad_(False)
    METHODS[method]().apply(model)
    assert all(p.dtype == torch.float32 for _, p in adapter_named_parameters(model))
    randomize(model)
    batch = sample_batch(build_tokenizer())
    out = forward(model, "llama", batch)
    assert out.dtype == torch.bfloat16
    merge_adapters(model)
    assert model.get_submodule("layers.0.self_attn.v_proj").base_layer.weight.dtype == torch.bfloat16
    assert (forward(model, "llama", batch).float() - out.float()).abs().max() < 0.1  # bf16 rounding only
    unmerge_adapters(model)


def test_refusals_name_the_problem():
    with pytest.raises(UserInputError, match=r"match no Linear layer of model_type 'bert'.*'encoder\.layer\.0\."):
        Lora(target_modules=["nonexistent"]).apply(frozen("bert"))
    toy = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(UserInputError, match=r"no default LoRA targets for model_type 'Sequential'.*'0'"):
        Lora().apply(toy)
    with pytest.raises(UserInputError, match="no default IA3 targets"):
        IA3().apply(toy)
    with pytest.raises(UserInputError, match="rank r must be a positive integer"):
        Lora(r=0)
    model = adapted("bert", Bottleneck())
    with pytest.raises(UserInputError, match="BottleneckLayer cannot be merged"):
        merge_adapters(model)
    with pytest.raises(UserInputError, match="no adapter layers"):
        merge_adapters(frozen("bert"))
    layer = LoraLayer(nn.Linear(4, 4), r=2, alpha=2, dropout=0.0, use_rslora=False)
    layer.merge()
    with pytest.raises(UserInputError, match="already merged"):
        layer.merge()


@pytest.mark.parametrize("family", ["bert", "gpt2"])
@pytest.mark.parametrize("method", METHODS)
def test_adapter_folder_round_trip(family, method, model_dirs, tmp_path):
    module = AdapterModule(model_dirs[family], strategy=METHODS[method](), label_names=["a", "b", "c"]).eval()
    randomize(module.backbone)
    batch = sample_batch(build_tokenizer())
    expected = module(batch)
    save_adapter(module, tmp_path / "adapter")
    reloaded = load_adapter(tmp_path / "adapter").eval()
    assert torch.equal(reloaded(batch), expected)
    assert reloaded.strategy.hparams() == module.strategy.hparams()


def _peft_twin(family: str, ours: nn.Module, config) -> nn.Module:
    """PEFT on a fresh copy of the same base, with our adapter weights copied in (PEFT's shapes and names)."""
    twin = get_peft_model(frozen(family), config).eval()
    state = {}
    for name, param in adapter_named_parameters(ours):
        layer_name, _, rest = name.rpartition(".lora_") if ".lora_" in name else (name[:-6], "", "ia3_l")
        if rest == "ia3_l":
            layer = ours.get_submodule(layer_name)
            vector = layer.full_scale().detach()  # PEFT: (1, in) for input scaling, (out, 1) for output scaling
            state[f"base_model.model.{layer_name}.ia3_l.default"] = (vector[None] if layer.feedforward
                                                                   else vector[:, None])
        else:
            part, _, tail = rest.partition(".")
            state[f"base_model.model.{layer_name}.lora_{part}.default.{tail}"] = param.detach()
    missing = set(state) - set(twin.state_dict())
    assert not missing, missing
    twin.load_state_dict(state, strict=False)
    return twin


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
@pytest.mark.parametrize("method", METHODS)
def test_numerically_equal_to_peft(family, method):
    ours = adapted(family, Lora(r=4, alpha=8, use_rslora=family == "llama") if method == "lora" else IA3())
    randomize(ours)
    names = wrapped(ours, LoraLayer if method == "lora" else IA3Layer)
    if method == "lora":
        config = LoraConfig(r=4, lora_alpha=8, target_modules=names, lora_dropout=0.0, use_rslora=family == "llama")
    else:
        ffn = [n for n in names if ours.get_submodule(n).feedforward]
        config = IA3Config(target_modules=names, feedforward_modules=ffn)
    twin = _peft_twin(family, ours, config)
    batch = sample_batch(build_tokenizer())
    assert torch.allclose(forward(twin, family, batch), forward(ours, family, batch), atol=1e-5, rtol=0)


@pytest.mark.parametrize(("tokens", "fused"), [(1, False), (8, False), (96, True), (512, True)])
def test_lora_fuses_the_update_only_when_enough_tokens_pay_for_it(tokens, fused):
    """Generation (one token a step) keeps the separate ``x A^T B^T`` path; training batches rebuild ``W + s B A``
    once. Both give the same output and gradients; 64x64 breaks even at 32 tokens."""
    torch.manual_seed(0)
    base = nn.Linear(64, 64).requires_grad_(False)
    layer = LoraLayer(base, r=4, alpha=8, dropout=0.0, use_rslora=False)
    nn.init.normal_(layer.lora_B.weight)
    x = torch.randn(1, tokens, 64, requires_grad=True)
    out = layer(x)
    assert (type(out.grad_fn).__name__ == "_LoraLinearBackward") is fused
    reference = base(x) + layer.scaling * (x @ layer.lora_A.weight.T @ layer.lora_B.weight.T)
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)
    (grad,) = torch.autograd.grad(out.sum(), layer.lora_A.weight)
    (expected,) = torch.autograd.grad(reference.sum(), layer.lora_A.weight)
    torch.testing.assert_close(grad, expected, atol=1e-4, rtol=1e-4)
