"""PEFT interop: our LoRA/IA3/prompt tuning exported as a PEFT folder gives PEFT the same hidden states (and, with our
head applied, the same logits); PEFT's own LoRA/IA3/prompt-tuning folders import with PEFT's outputs; bad folders are
refused in one line."""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch
from conftest import CONFIGS, build_tokenizer, sample_batch
from peft import (
    IA3Config,
    LoraConfig,
    PeftConfig,
    PeftModel,
    PeftModelForFeatureExtraction,
    PromptTuningConfig,
    get_peft_model,
)
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoModelForSequenceClassification

from lightning_adapters import AdapterModule, Bottleneck, ClassificationHead, UserInputError
from lightning_adapters.heads.base import backbone_inputs
from lightning_adapters.heads.classification import pool
from lightning_adapters.peft_export import (
    CONFIG_NAME,
    HEAD_MODULE,
    HEAD_PREFIX,
    WEIGHTS_NAME,
    export_peft,
    import_peft,
    load_peft,
)
from lightning_adapters.strategies import IA3, Lora, PromptTuning, merge_adapters
from lightning_adapters.strategies.base import adapter_layers, linear_features

LABELS = ["negative", "neutral", "positive"]
METHODS = {"lora": lambda: Lora(r=4, alpha=8), "ia3": lambda: IA3()}
N = 4  # virtual tokens


def trained(path: str, strategy, head=None) -> AdapterModule:
    """A module whose adapter and head weights are random, as after training (IA3 vectors around one)."""
    module = AdapterModule(path, strategy=strategy, head=head, label_names=LABELS).eval()
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.requires_grad:
                param.copy_(torch.randn_like(param) * 0.3 + (1.0 if name.endswith("ia3_l") else 0.0))
    return module


def hidden_states(model: nn.Module, batch: dict) -> torch.Tensor:
    return model(**backbone_inputs(batch, model)).last_hidden_state


def peft_hidden_states(model: nn.Module, batch: dict) -> torch.Tensor:
    """A T5 classifier's backbone is T5's encoder; PEFT holds the whole model (the base's own classes otherwise)."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    return hidden_states(base.encoder if base.config.is_encoder_decoder else model, batch)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", ["bert", "gpt2", "llama", "t5"])
def test_peft_reproduces_our_hidden_states(family, method, model_dirs, tmp_path):
    module = trained(model_dirs[family], METHODS[method]())
    batch = sample_batch(build_tokenizer())
    ours = hidden_states(module.backbone, batch)
    export_peft(module, tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        peft_model = PeftModel.from_pretrained(AutoModel.from_pretrained(model_dirs[family]), tmp_path).eval()
    assert not [w for w in caught if "missing adapter keys" in str(w.message)]  # no decoder layer wrapped for T5
    theirs = peft_hidden_states(peft_model, batch)
    base = peft_hidden_states(AutoModel.from_pretrained(model_dirs[family]).eval(), batch)
    assert (theirs - base).abs().max() > 1e-3  # the adapter was loaded, not silently skipped
    assert torch.allclose(theirs, ours, atol=1e-5, rtol=0)


def test_exported_config_and_keys_follow_peft(model_dirs, tmp_path):
    export_peft(trained(model_dirs["bert"], Lora(r=4, alpha=8, use_rslora=True)), tmp_path / "lora")
    config = json.loads((tmp_path / "lora" / CONFIG_NAME).read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] is None
    assert (config["r"], config["lora_alpha"], config["use_rslora"]) == (4, 8, True)
    assert config["target_modules"] == ["query", "value"] and config["fan_in_fan_out"] is False
    assert config["base_model_name_or_path"] == model_dirs["bert"]
    keys = set(load_file(tmp_path / "lora" / WEIGHTS_NAME))
    assert "base_model.model.encoder.layer.0.attention.self.query.lora_A.weight" in keys
    assert {k for k in keys if k.startswith(HEAD_PREFIX)} == {HEAD_PREFIX + "classifier.weight",
                                                              HEAD_PREFIX + "classifier.bias"}
    export_peft(trained(model_dirs["bert"], IA3()), tmp_path / "ia3")
    config = json.loads((tmp_path / "ia3" / CONFIG_NAME).read_text())
    # attention.output.dense must stay unwrapped: plain "output.dense" would also match it
    assert config["feedforward_modules"] == ["0.output.dense", "1.output.dense"]
    assert config["target_modules"] == ["key", "value", "0.output.dense", "1.output.dense"]
    export_peft(trained(model_dirs["gpt2"], IA3()), tmp_path / "gpt2")
    assert json.loads((tmp_path / "gpt2" / CONFIG_NAME).read_text())["fan_in_fan_out"] is True
    vector = load_file(tmp_path / "gpt2" / WEIGHTS_NAME)["base_model.model.h.0.attn.c_attn.ia3_l"]
    assert vector.shape == (96, 1) and torch.equal(vector[:32], torch.ones(32, 1))  # queries are not scaled
    export_peft(trained(model_dirs["t5"], PromptTuning(N, init_text="profit rose", tokenizer=model_dirs["t5"])),
                tmp_path / "prompt")
    config = json.loads((tmp_path / "prompt" / CONFIG_NAME).read_text())
    assert {k: config[k] for k in ("peft_type", "task_type", "num_virtual_tokens", "token_dim",
                                   "num_transformer_submodules", "num_attention_heads", "num_layers",
                                   "prompt_tuning_init", "prompt_tuning_init_text", "modules_to_save")} == {
        "peft_type": "PROMPT_TUNING", "task_type": "FEATURE_EXTRACTION", "num_virtual_tokens": N, "token_dim": 32,
        "num_transformer_submodules": 1, "num_attention_heads": 4, "num_layers": 2, "prompt_tuning_init": "TEXT",
        "prompt_tuning_init_text": "profit rose", "modules_to_save": ["lightning_adapters_head"]}
    weights = load_file(tmp_path / "prompt" / WEIGHTS_NAME)  # prompt learning: PEFT's base model is `base_model.`
    assert set(weights) == {"prompt_embeddings", "base_model.lightning_adapters_head.classifier.weight",
                            "base_model.lightning_adapters_head.classifier.bias"}
    assert weights["prompt_embeddings"].shape == (N, 32)
    parsed = PeftConfig.from_pretrained(tmp_path / "prompt")  # PEFT's own validation (TEXT needs a tokenizer)
    assert isinstance(parsed, PromptTuningConfig) and parsed.tokenizer_name_or_path == model_dirs["t5"]


# ---- prompt tuning: the same quantity on both sides -------------------------------------------------------------
def peft_prompt_hidden_states(peft_model: nn.Module, batch: dict) -> torch.Tensor:
    """PEFT's hidden states (the encoder's, for T5) without its N virtual positions in front: what our heads see."""
    extra = {"decoder_input_ids": batch["input_ids"][:, :2]} if peft_model.config.is_encoder_decoder else {}
    out = peft_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **extra)
    return (out.encoder_last_hidden_state if extra else out.last_hidden_state)[:, N:]


def same_on_tokens(actual: torch.Tensor, expected: torch.Tensor, mask: torch.Tensor) -> bool:
    # Pad positions are masked out of everything downstream (their positions differ between us and PEFT in decoders).
    return torch.allclose(actual[mask.bool()], expected[mask.bool()], atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama", "t5"])
def test_peft_reproduces_our_prompt_tuning_and_our_head_on_its_outputs(family, model_dirs, tmp_path):
    """Right padding, one segment: PEFT's text positions N.. are ours (ours count along the mask in decoders)."""
    module = trained(model_dirs[family], PromptTuning(N))
    batch = sample_batch(build_tokenizer())
    export_peft(module, tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        peft_model = PeftModel.from_pretrained(AutoModel.from_pretrained(model_dirs[family]), tmp_path).eval()
    assert isinstance(peft_model, PeftModelForFeatureExtraction)
    assert not [w for w in caught if "missing" in str(w.message) or "unexpected" in str(w.message)]
    theirs = peft_prompt_hidden_states(peft_model, batch)
    assert same_on_tokens(theirs, hidden_states(module.backbone, batch), batch["attention_mask"])
    head = module.head  # our head on PEFT's (trimmed) hidden states: the logits of our module
    assert torch.allclose(head.classifier(pool(theirs, batch["attention_mask"], head._pooling)), module(batch),
                          atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_with_left_padding_peft_counts_the_pads_as_positions(family, model_dirs, tmp_path):
    """PEFT passes no position_ids, so a left-padded row's text starts at N + pads. Encoders: ours too. Decoders: ours
    at N (counted along the mask); ours with explicit positions 0..s-1 (moved behind the prompt) is PEFT's run."""
    module = trained(model_dirs[family], PromptTuning(N))
    tok = build_tokenizer()
    tok.padding_side = "left"
    batch = sample_batch(tok)
    export_peft(module, tmp_path)
    theirs = peft_prompt_hidden_states(PeftModel.from_pretrained(AutoModel.from_pretrained(model_dirs[family]),
                                                                 tmp_path).eval(), batch)
    ours = hidden_states(module.backbone, batch)
    if family == "bert":
        assert same_on_tokens(theirs, ours, batch["attention_mask"])
        return
    assert not same_on_tokens(theirs, ours, batch["attention_mask"])
    positions = torch.arange(batch["input_ids"].shape[1])[None].expand(3, -1)
    ours = module.backbone(**backbone_inputs(batch, module.backbone), position_ids=positions).last_hidden_state
    assert same_on_tokens(theirs, ours, batch["attention_mask"])


class _HeadOn(ClassificationHead):
    """Our classifier on a base loaded with another auto class (export only needs the backbone and the head)."""

    def __init__(self, auto_class: type) -> None:
        super().__init__()
        self.auto_class = auto_class


@pytest.mark.parametrize(("family", "auto_class", "task_type"), [("llama", AutoModelForCausalLM, "CAUSAL_LM"),
                                                              ("t5", AutoModelForSeq2SeqLM, "SEQ_2_SEQ_LM")])
def test_prompt_export_for_language_model_bases(family, auto_class, task_type, model_dirs, tmp_path):
    """The task type follows the head's base class; PEFT's LM prompt tuning prepends to the (encoder) input as ours."""
    module = trained(model_dirs[family], PromptTuning(N), head=_HeadOn(auto_class))
    export_peft(module, tmp_path)
    assert json.loads((tmp_path / CONFIG_NAME).read_text())["task_type"] == task_type
    peft_model = PeftModel.from_pretrained(auto_class.from_pretrained(model_dirs[family]), tmp_path).eval()
    batch = sample_batch(build_tokenizer())
    if family == "t5":  # our classification backbone is T5's encoder, prompted as PEFT's seq2seq prompt tuning does
        theirs, ours = peft_prompt_hidden_states(peft_model, batch), hidden_states(module.backbone, batch)
    else:  # hidden states: the tiny folder holds no trained lm_head, so each load draws its own
        theirs = peft_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                            output_hidden_states=True).hidden_states[-1][:, N:]
        ours = module.backbone(**backbone_inputs(batch, module.backbone), output_hidden_states=True).hidden_states[-1]
    assert same_on_tokens(theirs, ours, batch["attention_mask"])


# ---- import ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("family", "method"), [("bert", "lora"), ("gpt2", "lora"), ("bert", "ia3"), ("gpt2", "ia3"),
                                                ("llama", "prompt"), ("t5", "prompt")])
def test_export_then_import_reproduces_the_logits(family, method, model_dirs, tmp_path):
    strategy = {"lora": lambda: Lora(r=4, alpha=8, target_modules="all-linear", use_rslora=True), "ia3": IA3,
                "prompt": lambda: PromptTuning(N)}[method]()
    module = trained(model_dirs[family], strategy)
    batch = sample_batch(build_tokenizer())
    export_peft(module, tmp_path)
    rebuilt = load_peft(tmp_path, model_dirs[family], label_names=LABELS).eval()
    assert type(rebuilt.strategy) is type(strategy)
    assert torch.equal(rebuilt(batch), module(batch))


def perturbed(model: nn.Module, marker: str, seed: int = 2) -> nn.Module:
    """PEFT's adapter weights moved away from their (identity) initialisation, as training would."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if marker in name:
                param.copy_(torch.randn_like(param) * 0.3 + (1.0 if marker == "ia3_l" else 0.0))
                if "c_attn" in name:  # GPT-2's fused q/k/v: our IA3 (the paper's) never scales queries
                    param[:32] = 1.0
    return model


PEFT_CONFIGS = {"lora": lambda: LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "o_proj"]),
                "ia3": IA3Config, "prompt": lambda: PromptTuningConfig(task_type="FEATURE_EXTRACTION",
                                                                        num_virtual_tokens=N)}
MARKERS = {"lora": "lora_", "ia3": "ia3_l", "prompt": "prompt_encoder"}


@pytest.mark.parametrize(("family", "method"), [("llama", "lora"), ("bert", "ia3"), ("gpt2", "ia3"),
                                                ("llama", "ia3"), ("bert", "prompt"), ("llama", "prompt"),
                                                ("t5", "prompt")])
def test_import_a_folder_written_by_peft(family, method, model_dirs, tmp_path):
    """PEFT's defaults (IA3: its own target table; prompt: random init) -> trained -> saved -> ours: PEFT's outputs.
    T5: PEFT's seq2seq prompt tuning (2N stored rows, the first N prompt the encoder) into our encoder backbone."""
    config = PEFT_CONFIGS[method]()
    if family == "t5":
        config = PromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=N)
    base = (AutoModelForSeq2SeqLM if family == "t5" else AutoModel).from_pretrained(model_dirs[family])
    peft_model = get_peft_model(base, config)
    perturbed(peft_model, MARKERS[method]).eval().save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PEFT's folders hold nothing we skip
        module = load_peft(tmp_path, model_dirs[family], label_names=LABELS).eval()
    batch = sample_batch(build_tokenizer())
    ours = hidden_states(module.backbone, batch)
    if method == "prompt":
        assert same_on_tokens(peft_prompt_hidden_states(peft_model, batch), ours, batch["attention_mask"])
    else:
        assert torch.allclose(ours, peft_hidden_states(peft_model, batch), atol=1e-5, rtol=0)
    base = peft_hidden_states(AutoModel.from_pretrained(model_dirs[family]).eval(), batch)
    assert (ours - base).abs().max() > 1e-3  # the adapter was loaded, not silently skipped


def rewritten(folder, config: dict | None = None, drop: str | None = None):
    """The folder with config entries replaced and/or weights whose key contains ``drop`` removed."""
    if config:
        path = folder / CONFIG_NAME
        path.write_text(json.dumps({**json.loads(path.read_text()), **config}))
    if drop:
        weights = load_file(folder / WEIGHTS_NAME)
        save_file({k: v for k, v in weights.items() if drop not in k}, folder / WEIGHTS_NAME)
    return folder


def test_export_refusals(model_dirs, tmp_path):
    with pytest.raises(UserInputError, match="Bottleneck declares no PEFT format .* use save_adapter"):
        export_peft(AdapterModule(model_dirs["bert"], strategy=Bottleneck(), label_names=LABELS), tmp_path)
    module = trained(model_dirs["bert"], IA3())
    merge_adapters(module.backbone)
    with pytest.raises(UserInputError, match="merged"):
        export_peft(module, tmp_path)
    module = AdapterModule(model_dirs["llama"], strategy=PromptTuning(N),
                           head=_HeadOn(AutoModelForSequenceClassification), label_names=LABELS)
    with pytest.raises(UserInputError, match="with AutoModel, .* not AutoModelForSequenceClassification — use "):
        export_peft(module, tmp_path)
    assert not list(tmp_path.iterdir())  # nothing written


class MyLora(Lora):
    """A LoRA variant with one more weight per layer (as DoRA's magnitude): plain LoRA's format would drop it."""

    def apply(self, model: nn.Module) -> None:
        super().apply(model)
        for _, layer in adapter_layers(model):
            layer.magnitude = nn.Parameter(torch.ones(linear_features(layer.base_layer)[1]))


class MyLoraClaimingLora(MyLora):
    peft_type = "LORA"  # a wrong claim: the extra weight has no place in a PEFT LoRA folder


def test_a_subclass_exports_only_its_own_declared_format_and_never_drops_weights(model_dirs, tmp_path):
    module = AdapterModule(model_dirs["bert"], strategy=MyLora(r=4), label_names=LABELS)
    with pytest.raises(UserInputError, match="^MyLora declares no PEFT format .* use save_adapter"):
        export_peft(module, tmp_path)
    module = AdapterModule(model_dirs["bert"], strategy=MyLoraClaimingLora(r=4), label_names=LABELS)
    with pytest.raises(UserInputError, match="no place for 4 trained weights .*magnitude"):
        export_peft(module, tmp_path)
    module = AdapterModule(model_dirs["bert"], strategy=Lora(r=4), label_names=LABELS)
    module.backbone.encoder.layer[0].output.LayerNorm.requires_grad_(True)  # trained, but not LoRA's to write
    with pytest.raises(UserInputError, match="no place for 2 trained weights .*LayerNorm"):
        export_peft(module, tmp_path)
    assert not list(tmp_path.iterdir())  # nothing written


def test_import_refusals(model_dirs, tmp_path):
    for method, strategy in {"lora": Lora(), "ia3": IA3(), "prompt": PromptTuning(N)}.items():
        export_peft(trained(model_dirs["llama"], strategy), tmp_path / method)
    with pytest.raises(UserInputError, match="holds a LOHA adapter; import_peft reads LORA, IA3, PROMPT_TUNING only"):
        import_peft(rewritten(tmp_path / "lora", {"peft_type": "LOHA"}))
    with pytest.raises(UserInputError, match="use_dora"):
        import_peft(rewritten(tmp_path / "lora", {"peft_type": "LORA", "use_dora": True}))
    with pytest.raises(UserInputError, match="not a readable PEFT adapter folder"):
        import_peft(tmp_path / "missing")
    # another base model: Llama's module paths are not BERT's; a 32-wide prompt does not fit a 48-wide model
    with pytest.raises(UserInputError, match="IA3 target_modules .* match no Linear layer of model_type 'bert'"):
        load_peft(tmp_path / "ia3", model_dirs["bert"], label_names=LABELS)
    wide = copy.deepcopy(CONFIGS["llama"])
    wide.hidden_size = 48
    AutoModel.from_config(wide).save_pretrained(tmp_path / "wide")
    with pytest.raises(UserInputError, match=r"weight 'backbone.prompt_tuning.prompt' has shape \(4, 32\), the model "
                                             r"expects \(4, 48\)"):  # (without our head, checked the same way)
        load_peft(rewritten(tmp_path / "prompt", drop=HEAD_MODULE), str(tmp_path / "wide"), label_names=LABELS)
    # missing weights
    with pytest.raises(UserInputError, match="1 missing weights .*layers.1.self_attn.v_proj.lora_B"):
        load_peft(rewritten(tmp_path / "lora", {"use_dora": False}, drop="layers.1.self_attn.v_proj.lora_B"),
                  model_dirs["llama"], label_names=LABELS)
    with pytest.raises(UserInputError, match="holds no IA3 vectors"):
        import_peft(rewritten(tmp_path / "ia3", drop="ia3_l"))
    with pytest.raises(UserInputError, match="no 'prompt_embeddings' of .* = 4 x 2 rows"):
        import_peft(rewritten(tmp_path / "prompt", {"num_transformer_submodules": 2}))
    with pytest.raises(UserInputError, match="no 'prompt_embeddings' of .* = 4 x 1 rows"):
        import_peft(rewritten(tmp_path / "prompt", {"num_transformer_submodules": 1}, drop="prompt_embeddings"))


def test_import_refuses_ia3_that_scales_fused_queries(model_dirs, tmp_path):
    peft_model = get_peft_model(AutoModel.from_pretrained(model_dirs["gpt2"]), IA3Config())
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "c_attn" in name and "ia3_l" in name:
                param[:32] = 2.0
    peft_model.save_pretrained(tmp_path)
    with pytest.raises(UserInputError, match="scales the queries of the fused projection 'h.0.attn.c_attn'"):
        import_peft(tmp_path)


def test_peft_own_head_is_skipped_with_a_warning(model_dirs, tmp_path):
    """HF's classifier (PEFT's modules_to_save for SEQ_CLS) pools differently from our heads: only the prompt comes."""
    base = AutoModelForSequenceClassification.from_pretrained(model_dirs["bert"], num_labels=3)
    get_peft_model(base, PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=N)).save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match=r"2 weights of .* are skipped \(e.g. \['base_model.classifier"):
        strategy, state = import_peft(tmp_path)
    assert strategy.num_virtual_tokens == N and set(state) == {"backbone.prompt_tuning.prompt"}
