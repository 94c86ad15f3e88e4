"""Precision policy: Trainer `precision` 32 / bf16-mixed / bf16-true on CPU, for every strategy.

The frozen base follows the Trainer (bf16 weights under bf16-true, fp32 otherwise); adapters and head always keep
fp32 master weights, train (their weights move), and are exported as fp32. fp16 ("16-mixed") needs a GPU's
GradScaler path and is not run here (CI has no GPU).
"""

from __future__ import annotations

import lightning as L
import pytest
import torch
from conftest import build_tokenizer, sample_batch
from safetensors.torch import load_file
from strategy_table import pick
from torch.utils.data import DataLoader

from lightning_adapters import AdapterModule, save_adapter
from lightning_adapters.adapter_folder import WEIGHTS_NAME

LABELS = ["negative", "neutral", "positive"]
STRATEGIES = pick("pfeiffer", "lora", "ia3", "prompt", "prefix")


def train_batches() -> DataLoader:
    batch = dict(sample_batch(build_tokenizer()), labels=torch.tensor([0, 1, 2]))
    return DataLoader([batch] * 3, batch_size=None)  # three steps on the same batch


def fit(path: str, strategy: str, precision: str) -> tuple[AdapterModule, dict[str, torch.Tensor], list[float]]:
    torch.manual_seed(0)
    module = AdapterModule(path, strategy=STRATEGIES[strategy](), label_names=LABELS, learning_rate=1e-2)
    before = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
    losses: list[float] = []
    module.on_train_batch_end = lambda outputs, *_: losses.append(float(outputs["loss"]))
    trainer = L.Trainer(precision=precision, max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, train_dataloaders=train_batches())
    return module, before, losses


@pytest.mark.parametrize("strategy", list(STRATEGIES))
@pytest.mark.parametrize("family", ["bert", "llama"])
@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true"])
def test_adapters_keep_fp32_master_weights_and_train(family, strategy, precision, model_dirs, tmp_path):
    module, before, losses = fit(model_dirs[family], strategy, precision)
    base_dtype = torch.bfloat16 if precision == "bf16-true" else torch.float32
    trainable = set(module.trainable_names())
    for name, param in module.named_parameters():
        assert param.dtype == (torch.float32 if name in trainable else base_dtype), name
    assert all(torch.isfinite(torch.tensor(loss)) for loss in losses) and len(losses) == 3
    assert any(not torch.equal(before[n], p) for n, p in module.named_parameters() if n in before)
    save_adapter(module, tmp_path)
    assert {t.dtype for t in load_file(tmp_path / WEIGHTS_NAME).values()} == {torch.float32}


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true"])
def test_low_precision_loss_tracks_fp32(precision, model_dirs):
    """Same data, same init: the first-step loss in bf16 is the fp32 one to bf16 accuracy (no silent misuse)."""
    _, _, reference = fit(model_dirs["llama"], "lora", "32")
    _, _, low = fit(model_dirs["llama"], "lora", precision)
    assert low[0] == pytest.approx(reference[0], rel=3e-2)
