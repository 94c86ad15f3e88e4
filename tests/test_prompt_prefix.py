"""Prompt and prefix tuning: exact equivalence with running the plain model on a real prefix text, padding, positions,
refusals, folding, gradient checkpointing, and the AdapterModule contract (head, gradients, adapter round trip)."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import CONFIGS, build_tokenizer, sample_batch
from torch import nn
from transformers import AutoModel, GPT2LMHeadModel

from lightning_adapters import AdapterModule, UserInputError, load_adapter, save_adapter
from lightning_adapters.strategies import (
    PrefixTuning,
    PromptTuning,
    adapter_named_parameters,
    capture_key_values,
)
from lightning_adapters.strategies.prefix import ATTENTION_NAME, prefix_encoder

LABELS = ["negative", "neutral", "positive"]
PREFIX_TEXT = "profit loss sales rose"


def frozen(family: str, implementation: str = "sdpa") -> nn.Module:
    """`build_model`'s weights on a private copy of the config (conftest's configs are shared by all tests)."""
    torch.manual_seed(0)
    model = AutoModel.from_config(copy.deepcopy(CONFIGS[family]), attn_implementation=implementation)
    return model.requires_grad_(False).eval()


def adapted(family: str, strategy, implementation: str = "sdpa") -> nn.Module:
    model = frozen(family, implementation)
    strategy.apply(model)
    return model


def concatenated(prefix_ids: torch.Tensor, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """``[P; x]`` ids and mask for every row of ``batch``."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    rows, n = ids.shape[0], prefix_ids.shape[1]
    return (torch.cat([prefix_ids.expand(rows, -1), ids], 1),
            torch.cat([torch.ones(rows, n, dtype=mask.dtype), mask], 1))


def real_tokens(tok) -> torch.Tensor:
    return tok([PREFIX_TEXT], add_special_tokens=False, return_tensors="pt")["input_ids"]


def same_on_tokens(actual: torch.Tensor, expected: torch.Tensor, mask: torch.Tensor) -> bool:
    # Pad positions are masked out of everything downstream; RoBERTa even numbers them differently.
    return torch.allclose(actual[mask.bool()], expected[mask.bool()], atol=1e-5, rtol=0)


# ---- prompt tuning ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["bert", "roberta", "gpt2", "llama"])
def test_prompt_of_real_embeddings_reproduces_the_concatenated_input(family):
    tok = build_tokenizer()
    prefix = real_tokens(tok)
    model = adapted(family, PromptTuning(num_virtual_tokens=prefix.shape[1]))
    with torch.no_grad():
        model.prompt_tuning.prompt.copy_(model.get_input_embeddings()(prefix)[0])
    plain = frozen(family)
    for side in ("right", "left") if family == "llama" else ("right",):
        tok.padding_side = side
        batch = sample_batch(tok)
        ids, mask = concatenated(prefix, batch)
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        # decoders count positions along the mask, so that left padding keeps the text right after the prompt
        positions = {"position_ids": mask.cumsum(-1) - 1} if family in ("gpt2", "llama") else {}
        expected = plain(input_ids=ids, attention_mask=mask, **positions).last_hidden_state[:, prefix.shape[1]:]
        assert out.shape == batch["input_ids"].shape + (32,)
        assert same_on_tokens(out, expected, batch["attention_mask"]), side


def test_prompt_goes_to_the_t5_encoder_only():
    tok = build_tokenizer()
    prefix = real_tokens(tok)
    model = adapted("t5", PromptTuning(num_virtual_tokens=prefix.shape[1]))
    with torch.no_grad():
        model.prompt_tuning.prompt.copy_(model.get_input_embeddings()(prefix)[0])
    batch = sample_batch(tok)
    decoder = batch["input_ids"][:, :4]
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], decoder_input_ids=decoder)
    ids, mask = concatenated(prefix, batch)
    ref = frozen("t5")(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder)
    assert out.encoder_last_hidden_state.shape[1] == batch["input_ids"].shape[1]
    assert torch.allclose(out.encoder_last_hidden_state, ref.encoder_last_hidden_state[:, prefix.shape[1]:], atol=1e-6)
    assert torch.allclose(out.last_hidden_state, ref.last_hidden_state, atol=1e-6)  # decoder: untouched length


def test_prompt_extends_mask_token_types_and_positions():
    model = adapted("bert", PromptTuning(num_virtual_tokens=3))
    seen = {}
    model.register_forward_pre_hook(lambda m, args, kwargs: seen.update(kwargs), with_kwargs=True)
    batch = sample_batch(build_tokenizer())
    positions = torch.arange(batch["input_ids"].shape[1])[None].expand(3, -1)
    model(**batch, token_type_ids=torch.ones_like(batch["input_ids"]), position_ids=positions)
    assert "input_ids" not in seen and seen["inputs_embeds"].shape[1] == batch["input_ids"].shape[1] + 3
    assert seen["attention_mask"][:, :3].eq(1).all() and torch.equal(seen["attention_mask"][:, 3:],
                                                                     batch["attention_mask"])
    assert seen["token_type_ids"][:, :3].eq(0).all() and seen["token_type_ids"][:, 3:].eq(1).all()
    assert torch.equal(seen["position_ids"][0], torch.arange(positions.shape[1] + 3))


def test_prompt_pads_labels_and_trims_logits_of_a_language_model():
    tok = build_tokenizer()
    prefix = real_tokens(tok)
    n = prefix.shape[1]
    plain = GPT2LMHeadModel(copy.deepcopy(CONFIGS["gpt2"])).eval().requires_grad_(False)
    model = GPT2LMHeadModel(copy.deepcopy(CONFIGS["gpt2"])).eval().requires_grad_(False)
    model.load_state_dict(plain.state_dict())
    PromptTuning(num_virtual_tokens=n).apply(model)
    with torch.no_grad():
        model.prompt_tuning.prompt.copy_(model.get_input_embeddings()(prefix)[0])
    batch = sample_batch(tok)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels)
    ids, mask = concatenated(prefix, batch)
    ref = plain(input_ids=ids, attention_mask=mask, labels=torch.cat([torch.full((3, n), -100), labels], 1))
    assert out.logits.shape[:2] == batch["input_ids"].shape
    assert torch.allclose(out.loss, ref.loss, atol=1e-6)
    assert same_on_tokens(out.logits, ref.logits[:, n:], batch["attention_mask"])


def test_prompt_refuses_inputs_beyond_the_position_embeddings():
    model = adapted("bert", PromptTuning(num_virtual_tokens=20))
    model(input_ids=torch.ones(1, 108, dtype=torch.long))  # 128 positions: fits exactly
    with pytest.raises(UserInputError, match=r"inputs of 110 tokens: 130 positions, more than the 128 .* "
                                             r"truncate inputs to 108 tokens"):
        model(input_ids=torch.ones(1, 110, dtype=torch.long))


def test_prompt_init_from_text_and_its_refusals(model_dirs):
    tok = build_tokenizer()
    model = adapted("bert", PromptTuning(num_virtual_tokens=5, init_text="profit rose", tokenizer=model_dirs["bert"]))
    ids = tok(["profit rose profit rose profit"], add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    assert torch.equal(model.prompt_tuning.prompt, model.get_input_embeddings()(ids))
    hparams, _ = PromptTuning(5, init_text="profit rose", tokenizer=model_dirs["bert"]).export_state(model)
    assert hparams["init_args"]["init_text"] is None and hparams["init_args"]["tokenizer"] is None  # weights suffice
    std = model.get_input_embeddings().weight.std()
    random = adapted("bert", PromptTuning(num_virtual_tokens=50)).prompt_tuning.prompt
    assert 0.7 * std < random.std() < 1.3 * std
    with pytest.raises(UserInputError, match="init_text needs the tokenizer"):
        PromptTuning(init_text="profit rose")
    with pytest.raises(UserInputError, match="num_virtual_tokens >= 1"):
        PromptTuning(num_virtual_tokens=0)
    with pytest.raises(UserInputError, match="KV cache"):
        adapted("gpt2", PromptTuning(num_virtual_tokens=2))(input_ids=ids[None], past_key_values=object())
    with pytest.raises(UserInputError, match="apply PromptTuning once"):
        PromptTuning(num_virtual_tokens=2).apply(model)


@pytest.mark.parametrize("method", ["prompt", "prefix"])
def test_adapter_weights_stay_fp32_on_a_bfloat16_base(method):
    model = frozen("llama").to(torch.bfloat16)
    (PromptTuning(num_virtual_tokens=4) if method == "prompt" else PrefixTuning(num_virtual_tokens=4)).apply(model)
    params = dict(adapter_named_parameters(model))
    assert params and all(p.dtype == torch.float32 for p in params.values())
    out = model(**sample_batch(build_tokenizer())).last_hidden_state
    assert out.dtype == torch.bfloat16
    out.float().pow(2).mean().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in params.values())


# ---- prefix tuning ---------------------------------------------------------------------------------------------
def prefixed_with_real_text(family: str, implementation: str, **capture_kwargs) -> tuple[nn.Module, torch.Tensor]:
    """A plain-prefix model whose prefixes are the keys/values the model itself computes for `PREFIX_TEXT` alone."""
    prefix = real_tokens(build_tokenizer())
    model = adapted(family, PrefixTuning(num_virtual_tokens=prefix.shape[1], reparameterize=False), implementation)
    prefix_encoder(model).set_key_values(capture_key_values(model, input_ids=prefix, **capture_kwargs))
    return model, prefix


@pytest.mark.parametrize("reparameterize", [False, True])
@pytest.mark.parametrize("family", ["bert", "llama", "t5"])
def test_prefix_init_text_starts_from_the_keys_and_values_of_that_text(family, reparameterize, model_dirs):
    """``init_text`` = `capture_key_values` on its tokens (repeated to N); through the MLP by an exact fit."""
    n = real_tokens(build_tokenizer()).shape[1] + 2  # the text's tokens, then its first two again
    strategy = PrefixTuning(num_virtual_tokens=n, reparameterize=reparameterize, hidden=16, init_text=PREFIX_TEXT,
                            tokenizer=model_dirs[family])
    torch.manual_seed(1)
    model = frozen(family).train()  # capture switches dropout off, then restores the mode
    strategy.apply(model)
    assert all(m.training for m in model.modules())
    model.eval()
    ids = real_tokens(build_tokenizer())
    ids = torch.cat([ids, ids[:, :2]], 1)
    reference = adapted(family, PrefixTuning(num_virtual_tokens=n, reparameterize=False))
    extra = {"decoder_input_ids": ids} if family == "t5" else {}
    prefix_encoder(reference).set_key_values(capture_key_values(reference, input_ids=ids, **extra))
    expected = prefix_encoder(reference).folded()
    assert torch.allclose(prefix_encoder(model).folded(), expected, atol=1e-5, rtol=0)
    assert (prefix_encoder(model).folded() - expected).abs().max() == 0 or reparameterize
    batch = sample_batch(build_tokenizer())
    extra = {"decoder_input_ids": batch["input_ids"][:, :4]} if family == "t5" else {}
    assert torch.allclose(model(**batch, **extra).last_hidden_state, reference(**batch, **extra).last_hidden_state,
                          atol=1e-4, rtol=0)
    hparams, _ = strategy.export_state(model)  # the exported prefixes replace the initialisation
    assert hparams["init_args"]["init_text"] is None and hparams["init_args"]["tokenizer"] is None


def test_prefix_init_text_on_a_bare_encoder_stack(model_dirs):
    """Heads that narrow T5 to its encoder: the probe must not pass decoder inputs to a model that has none."""
    encoder = frozen("t5").get_encoder()
    PrefixTuning(num_virtual_tokens=4, hidden=8, init_text=PREFIX_TEXT, tokenizer=model_dirs["t5"]).apply(encoder)
    ids = torch.cat([real_tokens(build_tokenizer())] * 2, 1)[:, :4]
    reference = frozen("t5").get_encoder()
    PrefixTuning(num_virtual_tokens=4, reparameterize=False).apply(reference)
    prefix_encoder(reference).set_key_values(capture_key_values(reference, input_ids=ids))
    assert torch.allclose(prefix_encoder(encoder).folded(), prefix_encoder(reference).folded(), atol=1e-5, rtol=0)


def test_prefix_init_text_refusals(model_dirs):
    with pytest.raises(UserInputError, match="prefix tuning init_text needs the tokenizer"):
        PrefixTuning(init_text=PREFIX_TEXT)
    with pytest.raises(UserInputError, match="init_text '' has no tokens"):
        adapted("gpt2", PrefixTuning(num_virtual_tokens=2, init_text="", tokenizer=model_dirs["gpt2"]))
    with pytest.raises(UserInputError, match="cannot fit 6 prefix positions through an MLP of width 11 stably — "
                                             "use hidden >= 12 or reparameterize=False"):
        adapted("gpt2", PrefixTuning(num_virtual_tokens=6, hidden=11, init_text=PREFIX_TEXT,
                                     tokenizer=model_dirs["gpt2"]))
    vocab = int(real_tokens(build_tokenizer()).max())  # a model one embedding short of the text's largest id
    with pytest.raises(UserInputError, match=f"gives token id {vocab}, beyond this model's {vocab} embeddings — set "
                                             "tokenizer to the backbone's own"):
        model = frozen("gpt2")
        model.resize_token_embeddings(vocab)
        PrefixTuning(num_virtual_tokens=2, init_text=PREFIX_TEXT, tokenizer=model_dirs["gpt2"]).apply(model)
    with torch.device("meta"):
        model = AutoModel.from_config(copy.deepcopy(CONFIGS["llama"]))
    with pytest.raises(UserInputError, match="prefix tuning needs the model's real weights, not the meta device"):
        PrefixTuning(num_virtual_tokens=2, init_text=PREFIX_TEXT, tokenizer=model_dirs["llama"]).apply(model)
    model = adapted("gpt2", PrefixTuning(num_virtual_tokens=2, hidden=8))
    with pytest.raises(UserInputError, match="has 2 attention layers but 0 key/value pairs"):
        prefix_encoder(model).set_key_values([])


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_prefix_from_a_real_text_reproduces_the_decoder_run_on_the_concatenation(family, implementation):
    """Causal attention: in the run on ``[P; x]`` P never sees x, so P's keys/values are exactly the prefix; the
    decoder input moves to positions N.. (counted along the mask), as it does in the concatenated run."""
    model, prefix = prefixed_with_real_text(family, implementation)
    plain, n, tok = frozen(family, implementation), prefix.shape[1], build_tokenizer()
    for side in ("right", "left"):
        tok.padding_side = side
        batch = sample_batch(tok)
        ids, mask = concatenated(prefix, batch)
        expected = plain(input_ids=ids, attention_mask=mask, position_ids=mask.cumsum(-1) - 1).last_hidden_state
        out = model(**batch).last_hidden_state
        assert same_on_tokens(out, expected[:, n:], batch["attention_mask"]), side
    # no mask at all: the causal mask is made explicit so that sdpa does not align it to the prefix
    out = model(input_ids=batch["input_ids"][:1]).last_hidden_state
    assert torch.allclose(out, plain(input_ids=ids[:1]).last_hidden_state[:, n:], atol=1e-5, rtol=0)
    with pytest.raises(UserInputError, match=rf"{128 - n + 1} tokens after {n} prefix positions: 129 positions, "
                                             rf"more than the 128 .* truncate inputs to {128 - n} tokens"):
        model(input_ids=torch.ones(1, 128 - n + 1, dtype=torch.long))


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_prefix_from_a_real_text_reproduces_an_encoder_run_where_p_does_not_see_x(family, implementation):
    """Bidirectional attention: the honest reference is the run on ``[P; x]`` with P's rows masked from x."""
    n = real_tokens(build_tokenizer()).shape[1]
    model, prefix = prefixed_with_real_text(family, implementation, position_ids=torch.arange(n)[None])
    batch = sample_batch(build_tokenizer())
    ids, _ = concatenated(prefix, batch)
    visible = torch.ones(3, ids.shape[1], ids.shape[1], dtype=torch.bool)
    visible[:, :n, n:] = False  # P does not attend to x
    visible[:, n:, n:] = batch["attention_mask"].bool()[:, None, :]  # x does not attend to its pads
    mask = visible[:, None]
    if implementation == "eager":
        mask = torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)
    positions = torch.arange(ids.shape[1])[None].expand(3, -1)
    expected = frozen(family, implementation)(input_ids=ids, attention_mask=mask, position_ids=positions)
    out = model(**batch, position_ids=positions[:, n:]).last_hidden_state
    assert same_on_tokens(out, expected.last_hidden_state[:, n:], batch["attention_mask"])


@pytest.mark.parametrize(("family", "layers"), [("bert", 2), ("roberta", 2), ("distilbert", 2), ("gpt2", 2),
                                                ("llama", 2), ("mistral", 2), ("t5", 6)])
def test_prefix_reaches_every_attention_layer_and_leaves_the_model_config_alone(family, layers):
    model = adapted(family, PrefixTuning(num_virtual_tokens=3, hidden=8))
    assert len(prefix_encoder(model).shapes) == layers  # T5: encoder self, decoder self and cross attention
    assert model.config._attn_implementation == "sdpa"  # masks are built as before
    routed = [m for m in model.modules() if getattr(getattr(m, "config", None), "_attn_implementation", "") ==
              ATTENTION_NAME]
    assert len(routed) == layers


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama", "t5"])
def test_prefix_is_not_the_identity_but_trains_only_its_parameters(family):
    batch = sample_batch(build_tokenizer())
    extra = {"decoder_input_ids": batch["input_ids"][:, :4]} if family == "t5" else {}
    reference = frozen(family)(**batch, **extra).last_hidden_state
    model = adapted(family, PrefixTuning(num_virtual_tokens=3, hidden=16)).train()
    out = model(**batch, **extra).last_hidden_state
    assert out.shape == reference.shape and (out - reference).abs().max() > 1e-3
    out.pow(2).mean().backward()
    trainable = {name for name, _ in adapter_named_parameters(model)}
    assert trainable == {"prefix_tuning.embedding", "prefix_tuning.mlp_in.weight", "prefix_tuning.mlp_in.bias",
                         "prefix_tuning.mlp_out.weight", "prefix_tuning.mlp_out.bias"}
    for name, param in model.named_parameters():
        assert (param.grad is not None and param.grad.abs().sum() > 0) == (name in trainable), name


def test_fold_is_bit_identical_and_records_plain_prefixes():
    strategy = PrefixTuning(num_virtual_tokens=3, hidden=16)
    model = adapted("llama", strategy)
    batch = sample_batch(build_tokenizer())
    before = model(**batch).last_hidden_state
    hparams, state = strategy.export_state(model)
    strategy.fold(model)
    assert torch.equal(model(**batch).last_hidden_state, before)
    assert strategy.hparams()["init_args"]["reparameterize"] is False and hparams == strategy.hparams()
    assert [name for name, _ in adapter_named_parameters(model)] == ["prefix_tuning.prefix"]
    assert torch.equal(state["prefix_tuning.prefix"], model.prefix_tuning.prefix)


@pytest.mark.parametrize("reentrant", [False, True])
@pytest.mark.parametrize("method", ["prompt", "prefix"])
def test_gradient_checkpointing_gives_the_same_gradients(method, reentrant):
    batch = sample_batch(build_tokenizer())
    grads = []
    for checkpointing in (False, True):
        strategy = PromptTuning(num_virtual_tokens=3) if method == "prompt" else PrefixTuning(3, hidden=16)
        model = adapted("llama", strategy).train()
        if checkpointing:  # transformers 5's name for gradient_checkpointing_enable
            if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.23
                model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": reentrant})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
        model(**batch).last_hidden_state.pow(2).mean().backward()
        grads.append([param.grad for _, param in adapter_named_parameters(model)])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads, strict=True))


def test_prefix_works_with_a_kv_cache():
    """The prefix is prepended after the cache update, so it is never stored and incremental decoding agrees."""
    model = adapted("llama", PrefixTuning(num_virtual_tokens=3, hidden=16))
    ids = sample_batch(build_tokenizer(), ["net sales fell and shares dropped"])["input_ids"]
    full = model(input_ids=ids).last_hidden_state[:, -1]
    cache = model(input_ids=ids[:, :-1], use_cache=True).past_key_values
    step = model(input_ids=ids[:, -1:], past_key_values=cache, use_cache=True).last_hidden_state[:, -1]
    assert torch.allclose(step, full, atol=1e-5, rtol=0)


class _NoInterface(nn.Module):
    """Attention written by hand: nothing goes through transformers' AttentionInterface."""

    def __init__(self):
        super().__init__()
        self.attention = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x):
        return self.attention(x, x, x)[0]


def test_prefix_refusals_name_the_problem():
    with pytest.raises(UserInputError, match="cannot inject keys/values into model_type '_NoInterface'"):
        PrefixTuning().apply(_NoInterface())
    model = frozen("llama")
    model.config._attn_implementation_internal = "flash_attention_2"
    with pytest.raises(UserInputError, match="eager and sdpa .* not 'flash_attention_2'"):
        PrefixTuning().apply(model)
    with pytest.raises(UserInputError, match="num_virtual_tokens >= 1"):
        PrefixTuning(num_virtual_tokens=0)
    model = adapted("gpt2", PrefixTuning(num_virtual_tokens=2, hidden=8))
    with pytest.raises(UserInputError, match="apply PrefixTuning once"):
        PrefixTuning().apply(model)


# ---- both, through AdapterModule and its classification head ----------------------------------------------------
STRATEGIES = {"prompt": lambda: PromptTuning(num_virtual_tokens=4),
              "prefix": lambda: PrefixTuning(num_virtual_tokens=4, hidden=16)}


@pytest.mark.parametrize("method", STRATEGIES)
@pytest.mark.parametrize("family", ["bert", "gpt2", "llama", "t5"])
def test_adapter_module_trains_and_round_trips(family, method, model_dirs, tmp_path):
    module = AdapterModule(model_dirs[family], strategy=STRATEGIES[method](), label_names=LABELS)
    batch = sample_batch(build_tokenizer())
    module.head.loss(module(batch), {"labels": torch.tensor([0, 1, 2])}).backward()
    trainable = set(module.trainable_names())
    assert trainable and all(n.startswith((f"backbone.{method}_tuning.", "head.")) for n in trainable)
    for name, param in module.named_parameters():
        assert (param.grad is not None) == (name in trainable), name
    module.eval()
    logits = module(batch)
    assert logits.shape == (3, len(LABELS))
    save_adapter(module, tmp_path / "adapter")
    assert torch.equal(load_adapter(tmp_path / "adapter").eval()(batch), logits)
    if method == "prefix":  # the folded export: plain prefixes, same logits
        module.strategy.fold(module.backbone)
        save_adapter(module, tmp_path / "folded")
        reloaded = load_adapter(tmp_path / "folded").eval()
        assert reloaded.strategy.reparameterize is False and torch.equal(reloaded(batch), logits)


@pytest.mark.parametrize("method", STRATEGIES)
def test_last_token_pooling_still_picks_the_last_real_token(method, model_dirs):
    module = AdapterModule(model_dirs["llama"], strategy=STRATEGIES[method](), label_names=LABELS).eval()
    tok = build_tokenizer()
    single = module(sample_batch(tok, ["net sales fell"]))
    for side in ("right", "left"):
        tok.padding_side = side
        padded = module(sample_batch(tok, ["net sales fell", "the bank card cut and the shares dropped"]))
        assert torch.allclose(padded[0], single[0], atol=1e-5), side
