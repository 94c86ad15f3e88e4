"""Real models shipped in PyPI packages: MiniLM (encoder) and SmolLM2-135M (decoder, GGUF). Marked slow."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from lightning_adapters import AdapterModule, Bottleneck, load_adapter, save_adapter
from lightning_adapters.backbone import load_tokenizer, resolve
from lightning_adapters.strategies import adapter_named_parameters

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
TEXTS = ["Operating profit rose to EUR 13.1 mn from EUR 8.7 mn.", "The company will cut 40 jobs in Finland.",
         "The annual general meeting is held in Helsinki."]


def hidden_states(module: AdapterModule, tokenizer) -> torch.Tensor:
    batch = dict(tokenizer(TEXTS, padding=True, return_tensors="pt"))
    batch.pop("token_type_ids", None)
    with torch.no_grad():
        return module.backbone(**batch).last_hidden_state


@pytest.fixture(scope="module")
def smollm2_module():
    return AdapterModule("smollm2", strategy=Bottleneck(variant="houlsby"), label_names=["a", "b"]).eval()


@pytest.mark.parametrize("variant", ["houlsby", "pfeiffer", "parallel"])
def test_minilm_bottleneck_equals_base_at_init(variant):
    tokenizer = load_tokenizer("minilm")
    adapted = AdapterModule("minilm", strategy=Bottleneck(variant=variant), label_names=["a", "b"]).eval()
    reference = hidden_states_of_plain_minilm(tokenizer)
    assert torch.allclose(hidden_states(adapted, tokenizer), reference, atol=1e-6, rtol=0)
    trainable = sum(p.numel() for p in adapted.parameters() if p.requires_grad)
    assert trainable / sum(p.numel() for p in adapted.parameters()) < 0.02


def hidden_states_of_plain_minilm(tokenizer) -> torch.Tensor:
    from transformers import AutoModel

    model = AutoModel.from_pretrained(resolve("minilm").path).eval()
    batch = dict(tokenizer(TEXTS, padding=True, return_tensors="pt"))
    batch.pop("token_type_ids", None)
    with torch.no_grad():
        return model(**batch).last_hidden_state


def test_smollm2_gguf_decoder_bottleneck_equals_base_at_init_and_round_trips(smollm2_module, tmp_path):
    from transformers import AutoModel

    source = resolve("smollm2")
    assert source.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf"
    tokenizer = load_tokenizer("smollm2")
    plain = AutoModel.from_pretrained(source.path, gguf_file=source.gguf_file).eval()
    batch = dict(tokenizer(TEXTS, padding=True, return_tensors="pt"))
    with torch.no_grad():
        reference = plain(**batch).last_hidden_state
    assert torch.allclose(hidden_states(smollm2_module, tokenizer), reference, atol=1e-6, rtol=0)
    assert smollm2_module.head._pooling == "last"
    torch.manual_seed(0)
    for _, param in adapter_named_parameters(smollm2_module.backbone):
        nn.init.normal_(param, std=0.02)
    with torch.no_grad():
        logits = smollm2_module(batch)
    save_adapter(smollm2_module, tmp_path)
    reloaded = load_adapter(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(batch), logits)


def test_quickstart_beats_the_majority_class_and_checkpoints_are_small(tmp_path, monkeypatch):
    """The README's main job: finance sentiment sample, Pfeiffer bottleneck on MiniLM."""
    from lightning_adapters.cli import run_cli

    monkeypatch.chdir(tmp_path)  # the config's relative run folders land here
    cli = run_cli(["fit", "--config", str(REPO / "configs/finance_sentiment/bottleneck.yaml"),
                   "--trainer.enable_progress_bar", "false"])
    accuracy = cli.trainer.callback_metrics["test_accuracy"].item()
    labels = [row["label"] for row in csv.DictReader(open(REPO / "tasks/finance_sentiment/sample/test.csv"))]
    majority = max(labels.count(label) for label in set(labels)) / len(labels)
    assert accuracy >= majority + 0.15, (accuracy, majority)
    base_bytes = os.path.getsize(Path(resolve("minilm").path) / "model.safetensors")
    checkpoints = list((tmp_path / "runs").rglob("*.ckpt"))
    assert checkpoints and all(os.path.getsize(c) <= 0.05 * base_bytes for c in checkpoints)
    adapter = tmp_path / "runs/finance_sentiment/lightning_logs/version_0/adapter"  # the run's versioned folder
    assert os.path.getsize(adapter / "adapter_model.safetensors") <= 0.05 * base_bytes
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["label_names"] == ["negative", "neutral", "positive"]


def test_the_continual_learning_config_keeps_the_quickstart_adapter_bit_identical(tmp_path, monkeypatch):
    """configs/customer_service/continual.yaml after the quickstart (both as smoke runs): the intent adapter trains
    beside the finance-sentiment one, whose outputs do not change."""
    from lightning_adapters.cli import run_cli

    monkeypatch.chdir(tmp_path)  # the configs' relative run folders land here
    smoke = ["--trainer.max_steps", "3", "--test_after_fit", "false", "--trainer.enable_progress_bar", "false"]
    run_cli(["fit", "--config", str(REPO / "configs/finance_sentiment/bottleneck.yaml"), *smoke])
    sentiment = load_adapter(tmp_path / "runs/finance_sentiment/lightning_logs/version_0/adapter").eval()
    tokenizer = load_tokenizer("minilm")
    batch = dict(tokenizer(["Operating profit rose to EUR 13.1 mn", "I lost my card"], padding=True,
                           return_tensors="pt"))
    with torch.no_grad():
        before = sentiment(batch)

    cli = run_cli(["fit", "--config", str(REPO / "configs/customer_service/continual.yaml"), *smoke])
    module = cli.model.eval()
    assert module.adapter_names == ["default", "sentiment"] and len(module.labels_of("default")) == 10
    module.set_active_adapters("sentiment")
    with torch.no_grad():
        assert torch.equal(module(batch), before)
    intent = json.loads((tmp_path / "runs/customer_service/lightning_logs/version_0/adapter/adapter_config.json")
                        .read_text())
    assert intent["strategy"]["class_path"].endswith("Lora") and len(intent["label_names"]) == 10
