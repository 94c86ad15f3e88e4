"""PEFT interop: our LoRA/IA3 exported as a PEFT folder gives PEFT the same hidden states; PEFT LoRA folders import."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from conftest import build_tokenizer, sample_batch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from torch import nn
from transformers import AutoModel

from lightning_adapters import AdapterModule, Bottleneck, UserInputError
from lightning_adapters.heads.base import backbone_inputs
from lightning_adapters.peft_export import CONFIG_NAME, HEAD_PREFIX, WEIGHTS_NAME, export_peft, import_peft_lora
from lightning_adapters.strategies import IA3, Lora, merge_adapters

LABELS = ["negative", "neutral", "positive"]
METHODS = {"lora": lambda: Lora(r=4, alpha=8), "ia3": lambda: IA3()}


def trained(path: str, strategy) -> AdapterModule:
    """A module whose adapter and head weights are random, as after training (IA3 vectors around one)."""
    module = AdapterModule(path, strategy=strategy, label_names=LABELS).eval()
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


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_export_then_import_reproduces_the_logits(family, model_dirs, tmp_path):
    module = trained(model_dirs[family], Lora(r=4, alpha=8, target_modules="all-linear", use_rslora=True))
    batch = sample_batch(build_tokenizer())
    export_peft(module, tmp_path)
    strategy, state = import_peft_lora(tmp_path)
    rebuilt = AdapterModule(model_dirs[family], strategy=strategy, label_names=LABELS).eval()
    rebuilt.check_trainable_state(state, "imported adapter")
    rebuilt.load_state_dict(state, strict=False)
    assert torch.equal(rebuilt(batch), module(batch))


def test_import_a_folder_written_by_peft(model_dirs, tmp_path):
    peft_model = get_peft_model(AutoModel.from_pretrained(model_dirs["llama"]),
                                LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "o_proj"])).eval()
    torch.manual_seed(2)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn_like(param) * 0.3)
    peft_model.save_pretrained(tmp_path)
    strategy, state = import_peft_lora(tmp_path)
    module = AdapterModule(model_dirs["llama"], strategy=strategy, label_names=LABELS).eval()
    module.load_state_dict(state, strict=False)
    assert set(state) == {n for n in module.trainable_names() if not n.startswith("head.")}
    batch = sample_batch(build_tokenizer())
    expected = peft_hidden_states(peft_model, batch)
    assert torch.allclose(hidden_states(module.backbone, batch), expected, atol=1e-5, rtol=0)


def test_refusals(model_dirs, tmp_path):
    with pytest.raises(UserInputError, match="export_peft supports Lora and IA3 only, not Bottleneck"):
        export_peft(AdapterModule(model_dirs["bert"], strategy=Bottleneck(), label_names=LABELS), tmp_path)
    module = trained(model_dirs["bert"], IA3())
    merge_adapters(module.backbone)
    with pytest.raises(UserInputError, match="merged"):
        export_peft(module, tmp_path)
    export_peft(trained(model_dirs["bert"], IA3()), tmp_path / "ia3")
    with pytest.raises(UserInputError, match="IA3 adapter; import_peft_lora reads LoRA only"):
        import_peft_lora(tmp_path / "ia3")
    export_peft(trained(model_dirs["bert"], Lora()), tmp_path / "dora")
    config = json.loads((tmp_path / "dora" / CONFIG_NAME).read_text())
    (tmp_path / "dora" / CONFIG_NAME).write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(UserInputError, match="use_dora"):
        import_peft_lora(tmp_path / "dora")
    with pytest.raises(UserInputError, match="not a readable PEFT adapter folder"):
        import_peft_lora(tmp_path / "missing")
