"""Gradient checkpointing of the frozen base: same gradients for every strategy, and it really recomputes."""

from __future__ import annotations

import pytest
import torch
from conftest import build_tokenizer, sample_batch
from strategy_table import pick
from torch import nn

from lightning_adapters import AdapterModule, Lora, UserInputError
from lightning_adapters import backbone as hf

LABELS = ["negative", "neutral", "positive"]
# the table's bottleneck uses tanh: no dead ReLU units, so every grad > 0; LoRA dropout: the same masks recomputed
STRATEGIES = pick("bottleneck", "lora", "ia3", "prompt", "prefix", lora={"dropout": 0.1})


def gradients(path: str, strategy: str, checkpointing: bool) -> tuple[dict[str, torch.Tensor], int]:
    """Trainable-weight gradients of one train-mode step (dropout on), and how often the first block ran."""
    torch.manual_seed(0)
    module = AdapterModule(path, strategy=STRATEGIES[strategy](), label_names=LABELS,
                           gradient_checkpointing=checkpointing)
    for param in module.parameters():  # non-zero adapters, so every adapter weight has a gradient path
        if param.requires_grad:
            nn.init.normal_(param, std=0.1)
    first_block = next(m for m in module.backbone.modules() if isinstance(m, nn.ModuleList))[0]
    # A leaf inside the block: transformers checkpoints the block's forward, so the block's own hooks run once.
    leaf = next(m for m in first_block.modules() if not list(m.children()) and list(m.parameters(recurse=False)))
    calls = []
    leaf.register_forward_hook(lambda *_: calls.append(1))
    batch = sample_batch(build_tokenizer())
    batch["labels"] = torch.tensor([0, 1, 2])
    torch.manual_seed(1)  # the same dropout masks in both runs
    module.head.loss(module(batch), batch).backward()
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.requires_grad}, len(calls)


@pytest.mark.parametrize("strategy", list(STRATEGIES))
@pytest.mark.parametrize("family", ["bert", "gpt2", "llama", "t5"])
def test_checkpointing_keeps_gradients_and_recomputes(family, strategy, model_dirs):
    plain, plain_calls = gradients(model_dirs[family], strategy, checkpointing=False)
    checked, checked_calls = gradients(model_dirs[family], strategy, checkpointing=True)
    assert (plain_calls, checked_calls) == (1, 2)  # the block ran again in backward: activations were not kept
    assert plain.keys() == checked.keys()
    for name, grad in plain.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(checked[name], grad, rtol=1e-5, atol=1e-6, msg=name)


def test_model_without_checkpointing_support_is_refused():
    class Plain(nn.Module):
        supports_gradient_checkpointing = False

    with pytest.raises(UserInputError, match="does not support gradient checkpointing"):
        hf.enable_gradient_checkpointing(Plain())


def test_fsdp_needs_named_transformer_blocks(model_dirs):
    """FSDP shards by HF's `_no_split_modules`; a model naming none is refused with the way out (DDP)."""
    module = AdapterModule(model_dirs["bert"], strategy=Lora(r=4), label_names=LABELS)
    blocks = {id(block) for block in hf.transformer_blocks(module.backbone)}
    assert {id(layer) for layer in module.backbone.encoder.layer} <= blocks  # each layer its own unit (+ embeddings)

    class Plain(nn.Module):
        _no_split_modules = None

    with pytest.raises(UserInputError, match="shard it with DDP instead of FSDP"):
        hf.transformer_blocks(Plain())
