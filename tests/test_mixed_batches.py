"""Mixed-task batches (issue 12, step 5): each row names its adapter (batch key ``adapter_names``).

Routing is exact: every row gets what running it alone with its adapter and head gives (1e-5), for every strategy
on an encoder, a decoder and an encoder-decoder; a mixed training step's gradients are the sum of the per-task
steps' gradients; evaluation reports each task's metrics under its own prefix; prediction keeps the row order.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch
from conftest import build_tokenizer
from strategy_table import STRATEGIES

from lightning_adapters import AdapterModule, ClassificationHead, UserInputError
from lightning_adapters.heads import GenerationHead
from lightning_adapters.strategies import adapter_named_parameters

KINDS = ["bottleneck", "lora", "ia3", "prompt", "prefix"]
OTHER = {"bottleneck": "lora", "lora": "bottleneck", "ia3": "prefix", "prompt": "lora", "prefix": "ia3"}
SENTIMENT, TOPICS = ["neg", "neu", "pos"], ["cards", "loans"]
TEXTS = ["the company profit rose in the quarter", "bank card cut", "net sales fell and shares dropped",
         "profit rose", "the bank cut the loan rate in the quarter"]
ROUTE = ["default", "topics", "default", "topics", "topics"]


def randomize(module: AdapterModule, name: str, seed: int) -> None:
    """Adapters start as the identity: give them weights that change the outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in adapter_named_parameters(module.backbone, name):
            param.add_(0.2 * torch.randn(param.shape, generator=generator))


def two_task_module(model_dir: str, kind: str) -> AdapterModule:
    module = AdapterModule(model_dir, strategy=STRATEGIES[kind].build(), label_names=SENTIMENT)
    module.add_adapter("topics", STRATEGIES[OTHER[kind]].build(), ClassificationHead(), label_names=TOPICS)
    randomize(module, "default", seed=1)
    randomize(module, "topics", seed=2)
    return module.eval()


def mixed_batch(route=ROUTE) -> dict:
    batch = dict(build_tokenizer()(TEXTS[: len(route)], padding=True, return_tensors="pt"))
    return {**batch, "adapter_names": list(route)}


def alone(module: AdapterModule, batch: dict, row: int, name: str) -> torch.Tensor:
    """Row ``row`` run by itself (a batch of one) with only adapter ``name`` switched on."""
    single = {k: v[row: row + 1] for k, v in batch.items() if isinstance(v, torch.Tensor)}
    module.set_active_adapters(name)
    try:
        with torch.no_grad():
            return module(single)[0]
    finally:
        module.set_active_adapters("default")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("family", ["bert", "llama", "t5"])
def test_every_row_gets_what_its_adapter_gives_it_alone(model_dirs, family, kind):
    module = two_task_module(model_dirs[family], kind)
    batch = mixed_batch()
    with torch.no_grad():
        outputs = module(batch)
    assert list(outputs) == ["default", "topics"]
    for name, (rows, logits) in outputs.items():
        assert logits.shape == (len(rows), len(module.labels_of(name)))
        for row, got in zip(rows.tolist(), logits, strict=True):
            assert ROUTE[row] == name
            torch.testing.assert_close(got, alone(module, batch, row, name), rtol=0, atol=1e-5)
    assert module.active_adapters == ["default"]  # routing leaves the switches as they were


@pytest.mark.parametrize("kind", ["prefix", "lora"])
def test_routing_reaches_an_encoder_decoders_decoder(model_dirs, kind):
    """Generation heads run the whole encoder-decoder (prefix tuning and LoRA in the decoder too)."""
    module = AdapterModule(model_dirs["t5"], strategy=STRATEGIES[kind].build(), head=GenerationHead())
    module.add_adapter("reply", STRATEGIES[OTHER[kind]].build(), GenerationHead())
    randomize(module, "default", seed=1)
    randomize(module, "reply", seed=2)
    module.eval()
    tokenizer = build_tokenizer()
    batch = dict(tokenizer(TEXTS[:3], padding=True, return_tensors="pt"))
    batch["labels"] = tokenizer(["profit rose", "card cut", "sales fell"], padding=True, return_tensors="pt")[
        "input_ids"]
    route = ["reply", "default", "reply"]
    with torch.no_grad():
        outputs = module({**batch, "adapter_names": route})
    for name, (rows, logits) in outputs.items():
        for row, got in zip(rows.tolist(), logits, strict=True):
            torch.testing.assert_close(got, alone(module, batch, row, name), rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_a_mixed_training_step_has_the_sum_of_the_per_task_gradients(model_dirs, family):
    module = two_task_module(model_dirs[family], "lora")
    module.train_adapter(["default", "topics"])
    batch = mixed_batch()
    batch["labels"] = torch.tensor([2, 1, 0, 0, 1])  # each row's label in its own task's label set

    module.zero_grad()
    module.training_step(batch, 0).backward()
    mixed = {name: param.grad.clone() for name, param in module.trainable_parameters()}
    assert any(name.startswith("extra_heads.topics.") for name in mixed)

    module.zero_grad()
    for task in ("default", "topics"):
        rows = [i for i, name in enumerate(ROUTE) if name == task]
        part = {k: v[rows] for k, v in batch.items() if isinstance(v, torch.Tensor)}
        with module.only_adapter(task):
            head = module.head_of(task)
            head.loss(head(module.backbone, part), part).backward()  # accumulates into .grad
    for name, param in module.trainable_parameters():
        torch.testing.assert_close(mixed[name], param.grad, rtol=0, atol=1e-5, msg=name)
        assert param.grad.abs().sum() > 0, name  # every trained adapter and head got a gradient


class MixedRows(torch.utils.data.Dataset):
    """Rows of two classification tasks, each naming its adapter; labels index the row's own task's labels."""

    def __init__(self, repeats: int) -> None:
        tokenizer = build_tokenizer()
        self.items = []
        for i in range(repeats * len(TEXTS)):
            encoded = tokenizer(TEXTS[i % len(TEXTS)], padding="max_length", max_length=12, return_tensors="pt")
            task = ROUTE[i % len(ROUTE)]
            label = i % (len(SENTIMENT) if task == "default" else len(TOPICS))
            self.items.append({"input_ids": encoded["input_ids"][0], "attention_mask": encoded["attention_mask"][0],
                               "labels": torch.tensor(label), "adapter_names": task})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def test_fit_validate_and_predict_on_mixed_batches(model_dirs):
    module = two_task_module(model_dirs["bert"], "bottleneck")
    module.train_adapter(["default", "topics"])
    loader = torch.utils.data.DataLoader(MixedRows(4), batch_size=5)  # the default collate lists the names
    trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(module, loader, loader)
    metrics = trainer.callback_metrics
    assert {"val_default_accuracy", "val_topics_accuracy", "val_topics_macro_f1", "train_loss_topics"} <= set(metrics)
    assert "val_accuracy" not in metrics  # nothing is scored under another task's labels

    rows = [row for batch in trainer.predict(module, loader) for row in batch]
    assert [row["adapter"] for row in rows] == [ROUTE[i % len(ROUTE)] for i in range(len(rows))]
    for row in rows:
        assert row["label"] in (SENTIMENT if row["adapter"] == "default" else TOPICS)


@pytest.mark.parametrize("route, message", [
    (["default", "missing", "default", "topics", "topics"], "batch names adapter 'missing', which this module does "
                                                            "not have"),
    (["default", "topics"], "must list one adapter name per row"),
    ("default", "must list one adapter name per row"),
])
def test_a_batch_naming_adapters_badly_is_refused_in_one_line(model_dirs, route, message):
    module = two_task_module(model_dirs["bert"], "lora")
    batch = {**mixed_batch(), "adapter_names": route}
    with pytest.raises(UserInputError, match=message) as info:
        module(batch)
    assert "\n" not in str(info.value) and module.active_adapters == ["default"]


def test_routing_refuses_a_merged_adapter_and_a_head_of_another_model_class(model_dirs):
    module = two_task_module(model_dirs["bert"], "lora")
    from lightning_adapters.strategies.base import adapter_layers

    for _, layer in adapter_layers(module.backbone):
        if layer.adapter_name == "default":
            layer.merge()
    with pytest.raises(UserInputError, match="adapter 'default' is merged into the base weights"):
        module(mixed_batch())
    with pytest.raises(UserInputError, match="GenerationHead needs the base loaded as AutoModelForGeneration"):
        module.add_adapter("reply", STRATEGIES["lora"].build(), GenerationHead())
    assert module.adapter_names == ["default", "topics"]
