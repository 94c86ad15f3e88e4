"""Continual learning (issue 12, step 3): a new task's adapter trains on a module that carries earlier tasks'
exported adapters, frozen — from Python (`AdapterModule(adapters=...)`) and from the command line
(``--model.init_args.adapters``). Earlier tasks' outputs stay bit-identical; the new adapter's checkpoints and export
are those of a module without the earlier ones."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import build_model, build_tokenizer, sample_batch
from strategy_table import STRATEGIES
from test_cli import adapter_weights, workdir, write_config  # noqa: F401 (workdir: a fixture)

from lightning_adapters import AdapterModule, UserInputError, load_adapter, save_adapter
from lightning_adapters.cli import run_cli
from lightning_adapters.strategies import FullFineTuning

TOPICS = ["cards", "loans"]


def logits(module: AdapterModule, batch: dict) -> torch.Tensor:
    module.eval()
    with torch.no_grad():
        return module(batch)


def trained_folder(path: Path, model_dir: str, kind: str, seed: int) -> Path:
    """An exported adapter with non-trivial weights (it starts as the identity): as an earlier task leaves one."""
    module = AdapterModule(model_dir, strategy=STRATEGIES[kind].build(), label_names=["neg", "neu", "pos"])
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in module.trainable_parameters():
            param.add_(0.1 * torch.randn(param.shape, generator=generator))
    save_adapter(module, path)
    return path


@pytest.mark.parametrize("earlier, new", [("bottleneck", "lora"), ("lora", "lora"), ("ia3", "prefix"),
                                          ("prompt", "bottleneck")])
def test_a_new_task_trains_beside_frozen_earlier_ones_which_stay_bit_identical(tmp_path, model_dirs, earlier, new):
    folder = trained_folder(tmp_path / "sentiment", model_dirs["bert"], earlier, seed=1)
    batch = sample_batch(build_tokenizer())
    alone = logits(load_adapter(folder), batch)

    module = AdapterModule(model_dirs["bert"], strategy=STRATEGIES[new].build(), label_names=TOPICS,
                           adapters={"sentiment": str(folder)})
    assert module.adapter_names == ["default", "sentiment"] and module.active_adapters == ["default"]
    plain = AdapterModule(model_dirs["bert"], strategy=STRATEGIES[new].build(), label_names=TOPICS)
    # the new adapter's weights are named as without the earlier one: its checkpoints and export are the same
    assert list(module.state_dict()) == list(plain.state_dict())

    loader = torch.utils.data.DataLoader([{**{k: v[i] for k, v in batch.items()}, "labels": torch.tensor(i % 2)}
                                          for i in range(3)], batch_size=3)
    L.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False).fit(module, loader)
    module.set_active_adapters("sentiment")
    assert torch.equal(logits(module, batch), alone)  # the earlier task, untouched

    module.set_active_adapters("default")  # the new task's export carries exactly what trained, alone
    save_adapter(module, tmp_path / "topics")
    reloaded = load_adapter(tmp_path / "topics")
    # close, not equal: LoRA on a plain Linear may take its fused path, and on the earlier (inactive) layer it can't
    torch.testing.assert_close(logits(reloaded, batch), logits(module, batch), rtol=0, atol=1e-6)


def test_init_from_starts_the_new_adapter_from_an_earlier_one(tmp_path, model_dirs):
    folder = trained_folder(tmp_path / "sentiment", model_dirs["bert"], "lora", seed=1)
    module = AdapterModule(model_dirs["bert"], strategy=STRATEGIES["lora"].build(), label_names=TOPICS,
                           adapters={"sentiment": str(folder)}, init_from="sentiment")
    saved = {k.removeprefix("backbone."): v for k, v in adapter_weights(folder).items() if k.startswith("backbone.")}
    own = {k.removeprefix("backbone."): v for k, v in module.state_dict().items() if k.startswith("backbone.")}
    assert set(own) == set(saved) and all(torch.equal(own[k], saved[k]) for k in own)
    assert set(module.trainable_names()) == set(AdapterModule(model_dirs["bert"], strategy=STRATEGIES["lora"].build(),
                                                              label_names=TOPICS).trainable_names())  # not the source

    with pytest.raises(UserInputError, match="init_from: adapter 'sentiment' is Lora.*this module trains Lora"):
        AdapterModule(model_dirs["bert"], strategy=STRATEGIES["lora"].build(r=8), label_names=TOPICS,
                      adapters={"sentiment": str(folder)}, init_from="sentiment")


@pytest.mark.parametrize("settings, message", [
    ({"init_from": "missing"}, "init_from 'missing' is not one of the loaded adapters"),
    ({"adapters": {"default": "FOLDER"}}, "adapters may not use the name 'default'"),
    ({"adapters": {"sentiment": "/no/such/folder"}}, "which is not a folder"),
    ({"init_from": "sentiment", "adapter": "FOLDER"}, "not both"),
    ({"strategy": FullFineTuning()}, "full fine-tuning changes the base"),
    ({"strategy": STRATEGIES["prompt"].build(), "earlier": "prompt"}, "this module also carries adapters sentiment"),
])
def test_continual_settings_that_cannot_work_are_refused_in_one_line(tmp_path, model_dirs, settings, message):
    folder = trained_folder(tmp_path / "sentiment", model_dirs["bert"], settings.pop("earlier", "lora"), seed=1)
    settings.setdefault("adapters", {"sentiment": str(folder)})
    settings = {k: ({n: str(folder) if f == "FOLDER" else f for n, f in v.items()} if k == "adapters" else
                    str(folder) if v == "FOLDER" else v) for k, v in settings.items()}
    with pytest.raises(UserInputError, match=message) as info:
        AdapterModule(model_dirs["bert"], label_names=TOPICS, **settings)
    assert "\n" not in str(info.value)


def test_an_earlier_adapter_for_another_base_is_refused(tmp_path, model_dirs):
    other = tmp_path / "other-base"
    build_model("bert", seed=99).save_pretrained(other)
    build_tokenizer().save_pretrained(other)
    folder = trained_folder(tmp_path / "sentiment", str(other), "lora", seed=1)
    with pytest.raises(UserInputError, match="was trained on base model"):
        AdapterModule(model_dirs["bert"], label_names=TOPICS, adapters={"sentiment": str(folder)})


def test_training_base_weights_beside_frozen_adapters_is_refused(tmp_path, model_dirs):
    folder = trained_folder(tmp_path / "sentiment", model_dirs["bert"], "lora", seed=1)
    module = AdapterModule(model_dirs["bert"], label_names=TOPICS, adapters={"sentiment": str(folder)})
    module.backbone.get_input_embeddings().weight.requires_grad_(True)  # as a user unfreezing a base weight
    with pytest.raises(UserInputError, match="would change the outputs of the frozen adapters sentiment"):
        module.check_earlier_adapters_kept()


def write_topics(path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for i in range(24):
            writer.writerow([("bank card cut fell" if i % 2 else "net sales profit rose") + f" {i % 5}",
                             TOPICS[i % 2]])


def test_continual_learning_from_the_command_line(workdir, model_dirs):  # noqa: F811
    """Fit task A and export it; fit task B with A listed under --model.init_args.adapters; A is untouched, B's
    checkpoint and export equal a single-adapter run's form, and test/resume read the config as it was."""
    bert = model_dirs["bert"]
    first = write_config(workdir, bert, **{"trainer.max_epochs": 1})
    run_cli(["fit", "--config", str(first)])
    batch = sample_batch(build_tokenizer())
    sentiment = logits(load_adapter(workdir / "adapter"), batch)
    (workdir / "first").mkdir()
    for output in ("adapter", "ckpt"):
        (workdir / output).rename(workdir / "first" / output)

    for split in ("train", "validation", "test"):
        write_topics(workdir / "data" / f"{split}.csv")
    second = write_config(workdir, bert, **{
        "trainer.max_epochs": 2,
        "model.init_args.strategy": STRATEGIES["lora"].config(),
        "model.init_args.adapters": {"sentiment": str(workdir / "first" / "adapter")},
    })
    cli = run_cli(["fit", "--config", str(second)])
    module = cli.model
    assert module.adapter_names == ["default", "sentiment"] and module.labels_of("default") == TOPICS
    module.set_active_adapters("sentiment")
    assert torch.equal(logits(module, batch), sentiment)

    checkpoint = torch.load(workdir / "ckpt" / "last.ckpt", weights_only=True)
    assert set(checkpoint["state_dict"]) == set(adapter_weights(workdir / "adapter"))  # only B, named as alone
    assert not any("base_layer" in key or "extra_heads" in key for key in checkpoint["state_dict"])
    topics = load_adapter(workdir / "adapter")  # B's export loads alone, on a plain module
    module.set_active_adapters("default")
    torch.testing.assert_close(logits(topics, batch), logits(module, batch), rtol=0, atol=1e-6)

    tested = run_cli(["test", "--config", str(second), "--ckpt_path", str(workdir / "ckpt" / "last.ckpt")])
    assert tested.model.adapter_names == ["default", "sentiment"]
    assert "test_accuracy" in tested.trainer.callback_metrics
