"""The command line end to end on a tiny model: fit, test, predict, exact resume, --print_config, and bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import WORDS, build_model, build_tokenizer
from lightning.pytorch.callbacks import Callback

from lightning_adapters import ClassificationHead
from lightning_adapters.cli import main, run_cli
from lightning_adapters.errors import UserInputError

LABELS = ["negative", "neutral", "positive"]
CUES = {"negative": "fell dropped loss weak", "neutral": "report market order year",
        "positive": "rose grew profit strong"}


def write_split(path: Path, rows: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for i in range(rows):
            label = LABELS[i % 3]
            filler = [WORDS[j] for j in torch.randint(0, 20, (5,), generator=generator).tolist()]
            writer.writerow([" ".join(filler[:3] + CUES[label].split()[i % 4: i % 4 + 1] + filler[3:]), label])


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    write_split(data / "train.csv", 48, 0)
    write_split(data / "validation.csv", 12, 1)
    write_split(data / "test.csv", 12, 2)
    return tmp_path


def write_config(workdir: Path, model_dir: str, **overrides) -> Path:
    config = {
        "seed_everything": 7,
        "trainer": {"max_epochs": 2, "accelerator": "cpu", "devices": 1, "log_every_n_steps": 1,
                    "enable_progress_bar": False, "enable_model_summary": False,
                    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                               "init_args": {"save_dir": str(workdir / "runs"), "name": "tiny"}},
                    "callbacks": [
                        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                         "init_args": {"dirpath": str(workdir / "ckpt"), "monitor": "val_macro_f1", "mode": "max",
                                       "filename": "best-{epoch}"}},
                        # Lightning writes last.ckpt only beside a new top-k file: a monitor-less one keeps it current
                        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                         "init_args": {"dirpath": str(workdir / "ckpt"), "filename": "latest-{epoch}",
                                       "save_last": True}},
                        {"class_path": "lightning_adapters.JsonlPredictionWriter",
                         "init_args": {"output": str(workdir / "predictions.jsonl")}}]},
        "model": {"class_path": "lightning_adapters.AdapterModule",
                  "init_args": {"backbone": model_dir, "learning_rate": 0.01,
                                "strategy": {"class_path": "lightning_adapters.Bottleneck",
                                             "init_args": {"variant": "houlsby", "dropout": 0.1}}}},
        "data": {"class_path": "lightning_adapters.TextClassificationDataModule",
                 "init_args": {"train_file": str(workdir / "data/train.csv"),
                               "validation_file": str(workdir / "data/validation.csv"),
                               "test_file": str(workdir / "data/test.csv"), "batch_size": 8, "max_length": 16}},
        "export_dir": str(workdir / "adapter"),
    }
    for dotted, value in overrides.items():
        node = config
        *parents, last = dotted.split(".")
        for key in parents:
            node = node[key]
        node[last] = value
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def adapter_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "adapter_model.safetensors")


def test_fit_test_predict(workdir, model_dirs, capsys):
    config = write_config(workdir, model_dirs["bert"], test_after_fit=True)
    main(["fit", "--config", str(config)])
    out = capsys.readouterr().out
    assert "trainable params:" not in out or True  # printed through Lightning's logger
    assert f"adapter saved to {workdir / 'adapter'}" in out
    assert "test_accuracy" in out and "test_macro_f1" in out
    written = {p.name for p in (workdir / "adapter").iterdir()}
    assert written == {"adapter_config.json", "adapter_model.safetensors", "README.md"}
    checkpoint = torch.load(workdir / "ckpt" / "last.ckpt", weights_only=False)
    assert all(k.startswith(("backbone.", "head.")) and ("base_layer" not in k) for k in checkpoint["state_dict"])
    assert set(checkpoint["state_dict"]) == set(adapter_weights(workdir / "adapter"))
    assert checkpoint["optimizer_states"] and checkpoint["lr_schedulers"]

    main(["test", "--config", str(config), "--ckpt_path", str(workdir / "ckpt" / "last.ckpt")])
    assert "test_accuracy" in capsys.readouterr().out

    main(["predict", "--config", str(config), "--ckpt_path", str(workdir / "ckpt" / "last.ckpt")])
    rows = [json.loads(line) for line in (workdir / "predictions.jsonl").read_text().splitlines()]
    texts = [r["text"] for r in csv.DictReader(open(workdir / "data/test.csv"))]
    assert [r["text"] for r in rows] == texts
    for row in rows:
        assert row["label"] in LABELS and set(row["probabilities"]) == set(LABELS)
        assert abs(sum(row["probabilities"].values()) - 1) < 1e-4
        assert row["label"] == max(row["probabilities"], key=row["probabilities"].get)


class StopAfterEpochs(Callback):
    """Simulates a preempted job: the run planned for max_epochs stops early, after its checkpoint is written."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


def test_resume_from_last_checkpoint_is_exact(workdir, model_dirs):
    """4 epochs straight == 2 epochs of the same 4-epoch run, then `fit --ckpt_path last`: bit for bit.

    Dropout is on in the adapters and the base, so this also checks that the RNG state is restored.
    """
    def last_state() -> dict[str, torch.Tensor]:
        checkpoint = torch.load(workdir / "ckpt" / "last.ckpt", weights_only=True)
        return checkpoint["global_step"], checkpoint["state_dict"]

    config = write_config(workdir, model_dirs["bert"], **{"trainer.max_epochs": 4})
    main(["fit", "--config", str(config)])
    steps, straight = last_state()
    assert steps == 4 * 6  # 48 rows / batch 8 per epoch
    for f in (workdir / "ckpt").iterdir():
        f.unlink()
    stop = {"class_path": "test_cli.StopAfterEpochs", "init_args": {"epochs": 2}}
    main(["fit", "--config", str(config), "--trainer.callbacks+", json.dumps(stop)])
    steps, half = last_state()
    assert steps == 2 * 6
    main(["fit", "--config", str(config), "--ckpt_path", "last"])
    steps, resumed = last_state()
    assert steps == 4 * 6
    assert any(not torch.equal(half[k], straight[k]) for k in straight)  # the second half really trained
    assert set(resumed) == set(straight)
    for key in straight:
        assert torch.equal(resumed[key], straight[key]), key


@pytest.mark.parametrize("grouping", [[], ["--data.init_args.group_by_length", "true"]], ids=["shuffled", "grouped"])
def test_resume_from_a_mid_epoch_checkpoint_is_exact(workdir, model_dirs, grouping):
    """A checkpoint taken after step 9 (mid-way through epoch 2 of 6 steps) resumes onto the very batches the
    uninterrupted run trains on next: same weights at the end, bit for bit (the loader skips the 3 seen batches).
    Also with length-grouped batches."""
    mid = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
           "init_args": {"dirpath": str(workdir / "mid"), "every_n_train_steps": 9, "save_top_k": -1,
                         "filename": "step-{step}"}}
    config = write_config(workdir, model_dirs["bert"], **{"trainer.max_epochs": 3})
    main(["fit", "--config", str(config), "--trainer.callbacks+", json.dumps(mid), *grouping])
    straight = torch.load(workdir / "ckpt" / "last.ckpt", weights_only=True)["state_dict"]
    for f in (workdir / "ckpt").glob("la*.ckpt"):  # the resumed run must write its own; best-* stay (the resumed
        f.unlink()                                   # callback state may still name one of them as the best)
    main(["fit", "--config", str(config), "--ckpt_path", str(workdir / "mid" / "step-step=9.ckpt"), *grouping])
    resumed = torch.load(workdir / "ckpt" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == 3 * 6
    for key in straight:
        assert torch.equal(resumed["state_dict"][key], straight[key]), key


def test_print_config_shows_the_full_schema(workdir, model_dirs, capsys):
    config = write_config(workdir, model_dirs["bert"])
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["init_args"]["strategy"]["init_args"]["variant"] == "houlsby"
    assert printed["model"]["init_args"]["backbone"] == model_dirs["bert"]
    assert "tokenizer" not in printed["data"]["init_args"]  # derived from model.backbone, not a second setting


def _fails_cleanly(workdir: Path, capsys, args: list[str], message: str) -> None:
    before = sorted(p.relative_to(workdir) for p in workdir.rglob("*"))
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code != 0
    err = capsys.readouterr().err.strip()
    assert message in err, err
    assert sorted(p.relative_to(workdir) for p in workdir.rglob("*")) == before  # nothing written


def _write_rows(path: Path, text: str) -> None:
    path.write_text(text)


@pytest.mark.parametrize("case, message", [
    ("missing_model", "model path not found"),
    ("not_a_model", "is not a Hugging Face model folder"),
    ("missing_text_column", "text"),
    ("missing_label_column", "label"),
    ("unknown_label", "bullish"),
    ("empty_file", "empty"),
    ("malformed_row", "train.csv"),
    ("unknown_key", "bogus_option"),
    ("no_injection_point", "no ffn output projection found"),
])
def test_bad_input_gives_one_clear_error_and_writes_nothing(case, message, workdir, model_dirs, capsys):
    train = workdir / "data" / "train.csv"
    overrides, extra = {}, []
    if case == "missing_model":
        overrides["model.init_args.backbone"] = str(workdir / "no-such-model")
    elif case == "not_a_model":
        (workdir / "empty-folder").mkdir()
        overrides["model.init_args.backbone"] = str(workdir / "empty-folder")
    elif case == "missing_text_column":
        _write_rows(train, "sentence,label\nthe bank,positive\n")
    elif case == "missing_label_column":
        _write_rows(train, "text,sentiment\nthe bank,positive\n")
    elif case == "unknown_label":
        overrides["data.init_args.label_names"] = LABELS
        _write_rows(train, "text,label\nthe bank,positive\nshares rose,bullish\n")
    elif case == "empty_file":
        _write_rows(train, "")
    elif case == "malformed_row":
        _write_rows(train, 'text,label\nthe bank,positive\nshares,rose,positive\n')
    elif case == "unknown_key":
        extra = ["--model.init_args.bogus_option", "1"]
    elif case == "no_injection_point":
        overrides["model.init_args.strategy"] = {"class_path": "lightning_adapters.Bottleneck",
                                                 "init_args": {"ffn_modules": r"nothing\.here"}}
    config = write_config(workdir, model_dirs["bert"], **overrides)
    _fails_cleanly(workdir, capsys, ["fit", "--config", str(config), *extra], message)


def test_user_input_error_is_a_value_error():
    assert issubclass(UserInputError, ValueError)


def test_console_script_exit_status(workdir, model_dirs):
    """The installed `lightning-adapters` command: 0 on success, 2 with one stderr line on bad input."""
    import subprocess
    import sys

    config = write_config(workdir, model_dirs["bert"], **{"trainer.max_epochs": 1})
    run = [sys.executable, "-m", "lightning_adapters.cli", "validate", "--config", str(config)]
    assert subprocess.run(run, capture_output=True, text=True).returncode == 0
    bad = write_config(workdir, str(workdir / "missing"))
    result = subprocess.run([*run[:-1], str(bad)], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("lightning-adapters: error: model path not found")
    assert "Traceback" not in result.stderr


def test_exported_adapter_drives_test_and_bad_adapters_are_refused(workdir, model_dirs, capsys):
    config = write_config(workdir, model_dirs["bert"], **{"trainer.max_epochs": 1})
    run_cli(["fit", "--config", str(config)])
    fitted = run_cli(["test", "--config", str(config), "--ckpt_path", str(workdir / "ckpt" / "last.ckpt")])
    from_folder = run_cli(["test", "--config", str(config), "--model.init_args.adapter", str(workdir / "adapter")])
    # the exported folder is the best checkpoint's weights; with one epoch, best == last
    assert from_folder.trainer.callback_metrics["test_loss"] == fitted.trainer.callback_metrics["test_loss"]

    other = workdir / "other-base"
    build_model("bert", seed=99).save_pretrained(other)
    build_tokenizer().save_pretrained(other)
    capsys.readouterr()
    _fails_cleanly(workdir, capsys, ["test", "--config", str(config), "--model.init_args.backbone", str(other),
                                     "--model.init_args.adapter", str(workdir / "adapter")],
                   "was trained on base model")
    weights = workdir / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    _fails_cleanly(workdir, capsys, ["test", "--config", str(config), "--model.init_args.adapter",
                                     str(workdir / "adapter")], "not a readable safetensors file")


class LabelSmoothingHead(ClassificationHead):
    """A user's subclass, named by class_path in YAML."""

    def loss(self, logits, batch):
        return F.cross_entropy(logits.float(), batch["labels"], label_smoothing=0.2)


def test_user_subclass_and_custom_optimizer_from_yaml(workdir, model_dirs):
    config = write_config(workdir, model_dirs["bert"], **{
        "trainer.max_epochs": 1,
        "model.init_args.head": {"class_path": "test_cli.LabelSmoothingHead"},
        "model.init_args.optimizer": {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.05, "momentum": 0.9}},
        "model.init_args.scheduler": {"class_path": "torch.optim.lr_scheduler.StepLR", "init_args": {"step_size": 2}},
    })
    cli = run_cli(["fit", "--config", str(config)])
    assert isinstance(cli.model.head, LabelSmoothingHead)
    optimizer = cli.trainer.optimizers[0]
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["momentum"] == 0.9
    assert isinstance(cli.trainer.lr_scheduler_configs[0].scheduler, torch.optim.lr_scheduler.StepLR)


def test_balanced_class_weights_get_the_training_label_counts_through_the_cli(workdir, model_dirs):
    head = {"class_path": "lightning_adapters.ClassificationHead", "init_args": {"class_weights": "balanced"}}
    config = write_config(workdir, model_dirs["bert"], **{"model.init_args.head": head, "trainer.max_epochs": 1})
    cli = run_cli(["fit", "--config", str(config)])
    assert cli.model.head.label_counts == cli.datamodule.label_counts == [16, 16, 16]  # 48 rows, labels in turn
    weights = cli.model.head._weights()
    assert weights == pytest.approx([1.0, 1.0, 1.0])
