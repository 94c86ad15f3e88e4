"""AdapterModule and adapter folders: frozen base, trainable-only state, exact save/load, refusals."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from conftest import FAMILIES, build_model, build_tokenizer, sample_batch
from safetensors.torch import load_file
from test_cli import workdir, write_config  # noqa: F401 — workdir is a fixture
from torch import nn
from torch.utils.data import DataLoader

from lightning_adapters import AdapterModule, Bottleneck, ClassificationHead, UserInputError, load_adapter, save_adapter
from lightning_adapters.adapter_folder import CONFIG_NAME, WEIGHTS_NAME
from lightning_adapters.cli import main

LABELS = ["negative", "neutral", "positive"]


def make_module(path: str, **kwargs) -> AdapterModule:
    kwargs.setdefault("strategy", Bottleneck(variant="houlsby"))
    return AdapterModule(path, label_names=LABELS, **kwargs)


def randomize_trainable(module: nn.Module, seed: int = 1) -> None:
    torch.manual_seed(seed)
    for param in module.parameters():
        if param.requires_grad:
            nn.init.normal_(param, std=0.2)


def test_base_is_frozen_and_state_dict_holds_only_trainable_weights(model_dirs):
    module = make_module(model_dirs["bert"])
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable == set(module.trainable_names())
    assert set(module.state_dict()) == trainable
    assert all(n.startswith(("backbone.", "head.")) for n in trainable)
    assert not any(p.requires_grad for n, p in module.backbone.named_parameters() if "base_layer" in n)


def test_an_unfrozen_base_weight_is_optimised_counted_checkpointed_and_exported(model_dirs, tmp_path):
    """One definition of trainable: a LayerNorm the user unfreezes trains, counts, is saved, exported and reloaded."""
    module = make_module(model_dirs["bert"])
    adapter_only = module.parameter_counts()[0]
    norm = module.backbone.encoder.layer[0].output.LayerNorm
    norm.requires_grad_(True)
    names = {"backbone.encoder.layer.0.output.LayerNorm.weight", "backbone.encoder.layer.0.output.LayerNorm.bias"}
    before = norm.weight.detach().clone()
    batch = dict(sample_batch(build_tokenizer()), labels=torch.tensor([0, 1, 2]))
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, train_dataloaders=DataLoader([batch] * 2, batch_size=None))
    assert not torch.equal(norm.weight, before)  # the optimizer updated it
    assert module.parameter_counts()[0] == adapter_only + 2 * 32
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    assert names <= set(torch.load(tmp_path / "last.ckpt", weights_only=False)["state_dict"])
    save_adapter(module, tmp_path / "adapter")
    assert names <= set(load_file(tmp_path / "adapter" / WEIGHTS_NAME))
    reloaded = load_adapter(tmp_path / "adapter").eval()
    assert names <= set(reloaded.trainable_names())  # trains again, and is saved again
    assert torch.equal(reloaded(batch), module.eval()(batch))


def test_frozen_adapter_or_head_weights_are_refused_before_they_are_lost(model_dirs, tmp_path):
    module = make_module(model_dirs["bert"])
    module.head.requires_grad_(False)
    with pytest.raises(UserInputError, match="adapter or head weights are frozen .* keep every adapter and head"):
        save_adapter(module, tmp_path)


@pytest.mark.parametrize("setting, message", [
    ({"learning_rate": 0.0}, "learning_rate must be positive, got 0.0"),
    ({"learning_rate": -1e-3}, "learning_rate must be positive"),
    ({"learning_rate": float("nan")}, "learning_rate must be positive"),
    ({"weight_decay": -0.01}, "weight_decay must be >= 0"),
    ({"warmup_ratio": 1.0}, r"warmup_ratio \(a fraction of the steps\) must be in \[0, 1\)"),
    ({"warmup_ratio": -0.1}, "warmup_ratio"),
])
def test_bad_optimizer_settings_are_refused_before_loading_anything(setting, message):
    with pytest.raises(UserInputError, match=message) as error:
        AdapterModule("/nonexistent/model", label_names=LABELS, **setting)  # checked before the model path
    assert "\n" not in str(error.value)


def test_cli_reports_a_negative_learning_rate_in_one_line(workdir, model_dirs, capsys):  # noqa: F811
    config = write_config(workdir, model_dirs["bert"], **{"model.init_args.learning_rate": -0.01})
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("lightning-adapters: error: learning_rate must be positive, got -0.01")


@pytest.mark.parametrize("family", FAMILIES)
def test_adapter_folder_round_trip_reproduces_logits_exactly(family, model_dirs, tmp_path):
    module = make_module(model_dirs[family]).eval()
    randomize_trainable(module)
    batch = sample_batch(build_tokenizer())
    expected = module(batch)
    save_adapter(module, tmp_path / "adapter")
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == ["README.md", CONFIG_NAME, WEIGHTS_NAME]
    reloaded = load_adapter(tmp_path / "adapter").eval()
    assert torch.equal(reloaded(batch), expected)
    assert reloaded.label_names == LABELS
    assert reloaded.strategy.hparams() == module.strategy.hparams()


def test_head_options_survive_the_round_trip(model_dirs, tmp_path):
    module = make_module(model_dirs["bert"], head=ClassificationHead(pooling="first", dropout=0.3))
    save_adapter(module, tmp_path)
    reloaded = load_adapter(tmp_path)
    assert reloaded.head.pooling == "first" and reloaded.head.dropout == 0.3


def test_adapter_from_another_base_is_refused(model_dirs, tmp_path):
    other = tmp_path / "other-bert"
    build_model("bert", seed=123).save_pretrained(other)
    build_tokenizer().save_pretrained(other)
    save_adapter(make_module(model_dirs["bert"]), tmp_path / "adapter")
    with pytest.raises(UserInputError, match="trained on base model .* load it onto the base it was trained on"):
        load_adapter(tmp_path / "adapter", backbone=str(other))
    with pytest.raises(UserInputError, match="trained on base model"):
        load_adapter(tmp_path / "adapter", backbone=model_dirs["roberta"])


def test_corrupt_or_incomplete_adapter_folders_are_refused(model_dirs, tmp_path):
    folder = save_adapter(make_module(model_dirs["bert"]), tmp_path / "adapter")
    weights = folder / WEIGHTS_NAME
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])
    with pytest.raises(UserInputError, match="not a readable safetensors file"):
        load_adapter(folder)
    weights.write_bytes(b"\x00" * 64)
    with pytest.raises(UserInputError, match="not a readable safetensors file"):
        load_adapter(folder)
    weights.write_bytes(good)
    config = json.loads((folder / CONFIG_NAME).read_text())
    (folder / CONFIG_NAME).write_text("{not json")
    with pytest.raises(UserInputError, match="not valid JSON"):
        load_adapter(folder)
    (folder / CONFIG_NAME).write_text(json.dumps(dict(config, strategy={"class_path": "os.system"})))
    with pytest.raises(UserInputError, match="'os.system' is not a Strategy"):
        load_adapter(folder)
    (folder / CONFIG_NAME).unlink()
    with pytest.raises(UserInputError, match=f"no {CONFIG_NAME}"):
        load_adapter(folder)


def test_adapter_with_other_strategy_settings_is_refused(model_dirs, tmp_path):
    folder = save_adapter(make_module(model_dirs["bert"]), tmp_path / "adapter")
    config = json.loads((folder / CONFIG_NAME).read_text())
    config["strategy"]["init_args"]["reduction_factor"] = 2
    (folder / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(UserInputError, match="weight .* has shape"):
        load_adapter(folder)
    config["strategy"]["init_args"].update(reduction_factor=16, variant="pfeiffer")
    (folder / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(UserInputError, match="unexpected"):
        load_adapter(folder)


@pytest.mark.parametrize("path, message", [
    ("/nonexistent/model", "model path not found"),
    ("./missing-model", "model path not found"),
])
def test_missing_model_path_is_refused(path, message):
    with pytest.raises(UserInputError, match=message):
        AdapterModule(path, label_names=LABELS)


def test_folder_that_is_not_a_hf_model_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UserInputError, match="is not a Hugging Face model folder"):
        AdapterModule(str(tmp_path), label_names=LABELS)


def test_classification_needs_labels(model_dirs):
    with pytest.raises(UserInputError, match="at least 2 label names"):
        AdapterModule(model_dirs["bert"], label_names=None)


def test_pooling_by_family(model_dirs):
    assert make_module(model_dirs["gpt2"]).head._pooling == "last"
    assert make_module(model_dirs["llama"]).head._pooling == "last"
    assert make_module(model_dirs["bert"]).head._pooling == "mean"
    t5 = make_module(model_dirs["t5"])
    assert t5.head._pooling == "mean" and not hasattr(t5.backbone, "decoder")  # encoder only


def test_last_token_pooling_ignores_left_and_right_padding(model_dirs):
    module = make_module(model_dirs["llama"]).eval()
    tok = build_tokenizer()
    single = module(sample_batch(tok, ["net sales fell"]))
    for side in ("right", "left"):
        tok.padding_side = side
        padded = module(sample_batch(tok, ["net sales fell", "the bank card cut and the shares dropped"]))
        assert torch.allclose(padded[0], single[0], atol=1e-5)


def test_bfloat16_base_with_fp32_adapters_and_head(model_dirs):
    module = make_module(model_dirs["llama"], dtype="bfloat16")
    assert module.backbone.get_input_embeddings().weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in module.parameters() if p.requires_grad)
    logits = module(sample_batch(build_tokenizer()))
    assert logits.dtype == torch.float32
    with pytest.raises(UserInputError, match="unknown dtype 'fp8'"):
        make_module(model_dirs["llama"], dtype="fp8")


def test_adapter_files_are_ordinary_readable_files(model_dirs, tmp_path):
    import os
    import stat

    folder = save_adapter(make_module(model_dirs["bert"]), tmp_path / "adapter")
    umask = os.umask(0)
    os.umask(umask)
    for path in folder.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temporary files left behind
