"""Families outside the default tables and outside transformers' AttentionInterface: IA3's and LoRA's structural
fallbacks (they agree with the tables where both apply) and prefix tuning on DeBERTa-v2/v3's disentangled attention."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import MORE_CONFIGS, build_model, build_tokenizer, sample_batch
from test_lora_ia3 import randomize
from test_strategies import forward
from torch import nn
from transformers import AutoModel, DebertaConfig, GPTNeoXConfig

from lightning_adapters import AdapterModule, UserInputError, load_adapter, save_adapter
from lightning_adapters.backbone import enable_gradient_checkpointing
from lightning_adapters.strategies import (
    IA3,
    IA3Layer,
    Lora,
    LoraLayer,
    PrefixTuning,
    adapter_named_parameters,
    capture_key_values,
    merge_adapters,
    unmerge_adapters,
)
from lightning_adapters.strategies import ia3 as ia3_module
from lightning_adapters.strategies import lora as lora_module
from lightning_adapters.strategies.prefix import prefix_encoder

PREFIX_TEXT = "profit loss sales rose"


def frozen(family: str, **config_changes) -> nn.Module:
    if not config_changes:
        return build_model(family).requires_grad_(False)
    config = copy.deepcopy(MORE_CONFIGS[family])
    for key, value in config_changes.items():
        setattr(config, key, value)
    torch.manual_seed(0)
    return AutoModel.from_config(config).requires_grad_(False).eval()


def ia3_layout(model: nn.Module) -> dict[str, tuple[bool, tuple[int, int]]]:
    """Every IA3 layer: (scales its input?, the scaled span)."""
    return {name: (m.feedforward, m.span) for name, m in model.named_modules() if isinstance(m, IA3Layer)}


def lora_places(model: nn.Module) -> list[str]:
    return sorted(name for name, m in model.named_modules() if isinstance(m, LoraLayer))


# ---- IA3 and LoRA: structural fallbacks ---------------------------------------------------------------------------
FALLBACKS = {"ia3": (IA3, ia3_module, ia3_layout), "lora": (Lora, lora_module, lora_places)}


@pytest.mark.parametrize("method", FALLBACKS)
@pytest.mark.parametrize("family", ["bert", "gpt2", "llama", "t5", "mistral"])
def test_structural_fallback_agrees_with_the_table(family, method, monkeypatch):
    """Where the table knows a family, tracing finds the same places (LoRA: cross-attention queries too, T5)."""
    strategy, module, layout = FALLBACKS[method]
    table = frozen(family)
    strategy().apply(table)
    monkeypatch.delitem(module.DEFAULT_TARGETS, table.config.model_type)  # as if the family were unknown
    traced = frozen(family)
    strategy().apply(traced)
    assert layout(traced) == layout(table) and layout(table)


def test_lora_covers_a_family_outside_the_table_and_starts_as_the_identity():
    assert "opt" not in lora_module.DEFAULT_TARGETS
    batch = sample_batch(build_tokenizer())
    reference = forward(frozen("opt"), "opt", batch)
    model = frozen("opt")
    Lora().apply(model)
    assert lora_places(model) == [f"decoder.layers.{i}.self_attn.{p}" for i in (0, 1) for p in ("q_proj", "v_proj")]
    assert torch.equal(forward(model, "opt", batch), reference)
    randomize(model)
    assert not torch.allclose(forward(model, "opt", batch), reference)


_DEBERTA = ("encoder.layer.{}.attention.self.", ["key_proj", "value_proj"], "encoder.layer.{}.output.dense")


@pytest.mark.parametrize(("family", "changes", "places"), [
    ("deberta-v2", {}, _DEBERTA),
    # separate position projections read the relative-position table, not the tokens: never taken for keys/values
    ("deberta-v2", {"share_att_key": False}, _DEBERTA),
    ("opt", {}, ("decoder.layers.{}.self_attn.", ["k_proj", "v_proj"], "decoder.layers.{}.fc2")),
])
def test_ia3_covers_families_outside_the_table_and_starts_as_the_identity(family, changes, places):
    assert family not in ia3_module.DEFAULT_TARGETS
    batch = sample_batch(build_tokenizer())
    reference = forward(frozen(family, **changes), family, batch)
    model = frozen(family, **changes)
    IA3().apply(model)
    scope, keys_values, ffn = places
    expected = {scope.format(i) + name: (False, (0, 32)) for i in (0, 1) for name in keys_values}
    expected |= {ffn.format(i): (True, (0, 64)) for i in (0, 1)}  # the 64-wide FFN activation
    assert ia3_layout(model) == expected
    assert torch.equal(forward(model, family, batch), reference)
    randomize(model)
    changed = forward(model, family, batch)
    assert (changed - reference).abs().max() > 1e-3
    merge_adapters(model)
    assert torch.allclose(forward(model, family, batch), changed, atol=1e-5, rtol=0)
    unmerge_adapters(model)


def test_ia3_fallback_refuses_what_it_cannot_place():
    config = GPTNeoXConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                           vocab_size=96, max_position_embeddings=128, bos_token_id=2, eos_token_id=5)
    model = AutoModel.from_config(config).requires_grad_(False)
    # GPT-NeoX interleaves q/k/v per head: scaling "the last two thirds" would scale queries too
    with pytest.raises(UserInputError, match=r"model_type 'gpt_neox' and no key/value projections found by structure "
                                             r"\(fused q/k/v projections of unknown layout: 'layers\.0\.attention\."
                                             r"query_key_value', \.\.\.\) — pass target_modules"):
        IA3().apply(model)
    IA3(target_modules=["dense_h_to_4h"]).apply(model)  # explicit targets need no structure


# ---- prefix tuning on DeBERTa-v2/v3 -------------------------------------------------------------------------------
def prefixed(model: nn.Module, n: int = 3, **capture) -> nn.Module:
    PrefixTuning(num_virtual_tokens=n, reparameterize=False).apply(model)
    if capture:
        prefix_encoder(model).set_key_values(capture_key_values(model, **capture))
    return model


def test_deberta_prefix_from_a_real_text_reproduces_the_encoder_run_where_p_does_not_see_x():
    """Content-only DeBERTa (no relative terms): the same exactness as BERT's — ``[P; x]`` with P's rows masked
    from x, x at positions N.. — through the disentangled path (shapes, layout, scale, mask)."""
    changes = {"relative_attention": False, "pos_att_type": [], "position_biased_input": True}
    tok = build_tokenizer()
    prefix = tok([PREFIX_TEXT], add_special_tokens=False, return_tensors="pt")["input_ids"]
    n = prefix.shape[1]
    model = prefixed(frozen("deberta-v2", **changes), n, input_ids=prefix, position_ids=torch.arange(n)[None])
    batch = sample_batch(tok)
    rows, length = batch["input_ids"].shape
    ids = torch.cat([prefix.expand(rows, -1), batch["input_ids"]], 1)
    mask = torch.cat([torch.ones(rows, n, dtype=torch.long), batch["attention_mask"]], 1)
    visible = torch.ones(rows, n + length, n + length, dtype=torch.bool)
    visible[:, :n, n:] = False  # P does not attend to x
    visible[:, n:, n:] = batch["attention_mask"].bool()[:, None, :]
    plain = frozen("deberta-v2", **changes)
    positions = torch.arange(n + length)[None].expand(rows, -1)
    # DeBERTa's model forward takes 2-D masks only: run its embeddings and encoder with the 3-D one ourselves
    expected = plain.encoder(plain.embeddings(input_ids=ids, position_ids=positions, mask=mask), visible)
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=positions[:, n:])
    keep = batch["attention_mask"].bool()
    assert torch.allclose(out.last_hidden_state[keep], expected.last_hidden_state[:, n:][keep], atol=1e-5, rtol=0)


def test_deberta_prefix_is_scored_by_content_and_tokens_keep_their_relative_terms():
    """DeBERTa-v3's attention: the documented equation, recomputed from the layer's own parts."""
    model = prefixed(frozen("deberta-v2"))
    layer = model.encoder.layer[0].attention.self
    seen = {}
    layer.register_forward_pre_hook(lambda m, args, kwargs: seen.update(h=args[0], **kwargs), with_kwargs=True)
    batch = sample_batch(build_tokenizer())
    probs = model(**batch, output_attentions=True).attentions[0]  # (batch, heads, L, N + L)
    heads, h = layer.num_attention_heads, seen["h"]
    q, k = (layer.transpose_for_scores(proj(h), heads) for proj in (layer.query_proj, layer.key_proj))
    scale = (q.shape[-1] * 3) ** 0.5  # c2p and p2c: s = sqrt(3 d)
    prefix_key = prefix_encoder(model).key_value(0)[0].expand(h.shape[0], -1, -1, -1).reshape(-1, 3, q.shape[-1])
    relative = layer.disentangled_attention_bias(q, k, seen["relative_pos"], seen["rel_embeddings"], 3)
    logits = torch.cat([q @ prefix_key.transpose(1, 2) / scale, q @ k.transpose(1, 2) / scale + relative], -1)
    logits = logits.view(*probs.shape)
    pad_keys = ~batch["attention_mask"].bool()[:, None, None, :]
    logits[..., 3:] = logits[..., 3:].masked_fill(pad_keys, float("-inf"))
    rows = batch["attention_mask"].bool()  # pad query rows are never read
    assert torch.allclose(probs.transpose(1, 2)[rows], logits.softmax(-1).transpose(1, 2)[rows], atol=1e-6)


def test_deberta_prefix_with_padding_equals_each_row_alone():
    model = prefixed(frozen("deberta-v2"))
    tok = build_tokenizer()
    texts = ["the company profit rose in the quarter", "bank card cut"]
    batch = sample_batch(tok, texts)
    together = model(**batch).last_hidden_state
    for row, text in enumerate(texts):
        alone = model(**sample_batch(tok, [text])).last_hidden_state[0]
        assert torch.allclose(together[row, :alone.shape[0]], alone, atol=1e-5, rtol=0), text


def test_deberta_prefix_trains_only_its_parameters_and_survives_gradient_checkpointing():
    batch = sample_batch(build_tokenizer())
    grads = []
    for checkpointing in (False, True):
        model = frozen("deberta-v2")
        PrefixTuning(num_virtual_tokens=3, hidden=16).apply(model)
        assert prefix_encoder(model).shapes == [(4, 8, 8), (4, 8, 8)]
        model.train()
        if checkpointing:  # the prefix is computed inside each layer, so the recomputation is exact
            enable_gradient_checkpointing(model)  # the library route: either transformers name
        torch.manual_seed(0)  # the same dropout masks in both runs
        model(**batch).last_hidden_state.pow(2).mean().backward()
        trainable = {name for name, _ in adapter_named_parameters(model)}
        for name, param in model.named_parameters():
            assert (param.grad is not None and param.grad.abs().sum() > 0) == (name in trainable), name
        grads.append([param.grad for _, param in adapter_named_parameters(model)])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads, strict=True))


@pytest.mark.parametrize("method", ["ia3", "prefix"])
def test_deberta_adapter_module_round_trip(method, tmp_path):
    folder = tmp_path / "deberta"
    build_model("deberta-v2").save_pretrained(folder)
    build_tokenizer().save_pretrained(folder)
    strategy = IA3() if method == "ia3" else PrefixTuning(num_virtual_tokens=3, hidden=16)
    module = AdapterModule(str(folder), strategy=strategy, label_names=["a", "b", "c"]).eval()
    batch = sample_batch(build_tokenizer())
    expected = module(batch)
    save_adapter(module, tmp_path / "adapter")
    assert torch.equal(load_adapter(tmp_path / "adapter").eval()(batch), expected)


def test_prefix_refuses_families_it_does_not_cover_by_name():
    config = DebertaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                           vocab_size=96, max_position_embeddings=128)
    with pytest.raises(UserInputError, match=r"model_type 'deberta': its attention neither dispatches through "
                                             r"transformers' AttentionInterface .* nor is DeBERTa-v2/v3's"):
        PrefixTuning().apply(AutoModel.from_config(config).requires_grad_(False))
