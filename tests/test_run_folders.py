"""Lightning's output conventions through the CLI: every run writes under its own versioned folder of
``default_root_dir``, a second run never overwrites the first, ``--ckpt_path last`` resumes the newest run in place,
smoke runs shorter than one validation end cleanly, and logs without a terminal read as lines."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from test_cli import workdir, write_config  # noqa: F401 — the fixture and the tiny config
from test_configs import EXPERIMENTS

from lightning_adapters.cli import main

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "finance_sentiment" / "bottleneck.yaml"


def versioned_config(workdir: Path, model_dir: str, **overrides) -> Path:  # noqa: F811
    """The tiny CLI config laid out as the shipped ones are: no logger, checkpoint folder or prediction path."""
    config = yaml.safe_load(write_config(workdir, model_dir, **overrides).read_text())
    config.pop("export_dir")
    trainer = config["trainer"]
    trainer.pop("logger")
    trainer["default_root_dir"] = str(workdir / "runs")
    for callback in trainer["callbacks"]:
        callback.get("init_args", {}).pop("dirpath", None)
        callback.get("init_args", {}).pop("output", None)
    path = workdir / "versioned.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def test_two_runs_write_two_version_folders_and_nothing_outside_the_root(workdir, model_dirs, capsys):  # noqa: F811
    config = versioned_config(workdir, model_dirs["bert"])
    before = files_under(workdir)
    main(["fit", "--config", str(config)])
    first = (workdir / "runs/lightning_logs/version_0/adapter/adapter_model.safetensors").read_bytes()
    assert f"run folder: {workdir / 'runs/lightning_logs/version_0'}" in capsys.readouterr().out
    main(["fit", "--config", str(config), "--model.init_args.strategy", str(REPO / "configs/strategy/lora.yaml")])
    assert (workdir / "runs/lightning_logs/version_0/adapter/adapter_model.safetensors").read_bytes() == first
    second = json.loads((workdir / "runs/lightning_logs/version_1/adapter/adapter_config.json").read_text())
    assert "Lora" in second["strategy"]["class_path"]
    for version in ("version_0", "version_1"):
        run = files_under(workdir / "runs/lightning_logs" / version)
        assert {"config.yaml", "checkpoints/last.ckpt"} <= run
        assert any(f == "metrics.csv" or f.startswith("events.out.tfevents") for f in run)  # CSV, or TensorBoard
    assert {f for f in files_under(workdir) - before if not f.startswith("runs/")} == set()

    main(["predict", "--config", str(config), "--ckpt_path",
          str(workdir / "runs/lightning_logs/version_0/checkpoints/last.ckpt")])
    assert (workdir / "runs/lightning_logs/version_2/predictions.jsonl").is_file()


def test_tensorboard_is_lightnings_default_logger_once_installed_and_a_csv_logger_can_be_named(
        workdir, model_dirs):  # noqa: F811
    pytest.importorskip("tensorboard", reason="the [tensorboard] extra (part of [test])")
    config = versioned_config(workdir, model_dirs["bert"], **{"trainer.max_epochs": 1})
    main(["fit", "--config", str(config)])
    assert any(f.startswith("events.out.tfevents") for f in files_under(workdir / "runs/lightning_logs/version_0"))
    main(["fit", "--config", str(config), "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
          "--trainer.logger.init_args.save_dir", str(workdir / "csv")])
    assert {"metrics.csv", "adapter/adapter_model.safetensors"} <= files_under(workdir / "csv/lightning_logs/version_0")


def test_ckpt_path_last_resumes_the_newest_run_in_its_own_folder(workdir, model_dirs, capsys):  # noqa: F811
    config = versioned_config(workdir, model_dirs["bert"], **{"trainer.max_epochs": 3})
    stop = {"class_path": "test_cli.StopAfterEpochs", "init_args": {"epochs": 1}}
    main(["fit", "--config", str(config), "--trainer.callbacks+", json.dumps(stop)])
    main(["fit", "--config", str(config), "--trainer.callbacks+", json.dumps(stop)])  # version_1, also stopped
    capsys.readouterr()
    main(["fit", "--config", str(config), "--ckpt_path", "last"])
    newest = workdir / "runs/lightning_logs/version_1"
    assert f"resuming {newest / 'checkpoints/last.ckpt'}" in capsys.readouterr().out
    assert torch.load(newest / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 3 * 6
    assert torch.load(workdir / "runs/lightning_logs/version_0/checkpoints/last.ckpt",
                      weights_only=True)["global_step"] == 6
    assert not (workdir / "runs/lightning_logs/version_2").exists()


def test_a_run_shorter_than_one_validation_ends_cleanly_with_early_stopping(workdir, model_dirs):  # noqa: F811
    config = versioned_config(workdir, model_dirs["bert"])
    stopping = {"class_path": "lightning_adapters.EarlyStopping", "init_args": {"monitor": "val_macro_f1"}}
    main(["fit", "--config", str(config), "--trainer.max_steps", "2", "--trainer.callbacks+", json.dumps(stopping)])
    assert (workdir / "runs/lightning_logs/version_0/adapter/adapter_model.safetensors").is_file()


def test_early_stopping_still_refuses_a_monitor_that_validation_never_logs(workdir, model_dirs):  # noqa: F811
    config = versioned_config(workdir, model_dirs["bert"])
    stopping = {"class_path": "lightning_adapters.EarlyStopping", "init_args": {"monitor": "val_macro_f2"}}
    with pytest.raises(RuntimeError, match="val_macro_f2"):
        main(["fit", "--config", str(config), "--trainer.callbacks+", json.dumps(stopping)])


def test_progress_without_a_terminal_is_one_line_per_epoch(workdir, model_dirs, capsys):  # noqa: F811
    config = versioned_config(workdir, model_dirs["bert"], **{"trainer.enable_progress_bar": True})
    main(["fit", "--config", str(config)])  # pytest captures stderr: not a terminal
    captured = capsys.readouterr()
    assert "\r" not in captured.out + captured.err
    epochs = [line for line in captured.out.splitlines() if line.startswith("epoch ")]
    assert [line.split(" · ")[0] for line in epochs] == ["epoch 1/2", "epoch 2/2"]
    assert all("train_loss" in line for line in epochs)
    assert sum(line.startswith("validation · ") and "val_macro_f1" in line for line in captured.out.splitlines()) == 2


def test_help_starts_with_an_overview_of_our_options(capsys):
    for args in (["--help"], ["fit", "--help"], ["predict", "--help"]):
        with pytest.raises(SystemExit):
            main(args)
        head = capsys.readouterr().out[:3000]
        assert "--model.help" in head and "--data.help" in head and "--data.init_args.data_dir" in head




@pytest.mark.parametrize("config", EXPERIMENTS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_shipped_configs_write_nothing_outside_a_run_folder(config):
    text = config.read_text()
    assert "export_dir" not in text and "dirpath" not in text and "output:" not in text and "save_dir" not in text
    assert yaml.safe_load(text)["trainer"]["default_root_dir"].startswith("runs/")
    assert "shared/data" not in text  # a path only this project's checkout has


def test_real_data_config_without_the_data_variable_says_what_to_set(monkeypatch, capsys):
    monkeypatch.delenv("LIGHTNING_ADAPTERS_DATA", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(REPO / "configs/finance_sentiment/phrasebank.yaml")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "$LIGHTNING_ADAPTERS_DATA, which is not set" in error and "--data.init_args.data_dir" in error
    assert "tasks/finance_sentiment/DATA_CARD.md" in error


def test_real_data_config_with_a_missing_folder_names_it(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("LIGHTNING_ADAPTERS_DATA", str(tmp_path))
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(REPO / "configs/customer_service/banking77.yaml")])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"data_dir '{tmp_path / 'banking77'}' is not a folder (BANKING77 is not bundled)" in error
    assert "--data.init_args.data_dir" in error


@pytest.mark.skipif(not os.environ.get("LIGHTNING_ADAPTERS_DATA") and not (REPO.parent / "shared/data").is_dir(),
                    reason="needs the shared datasets (LIGHTNING_ADAPTERS_DATA)")
def test_real_data_config_reads_the_data_variable(monkeypatch):
    data = os.environ.get("LIGHTNING_ADAPTERS_DATA") or str(REPO.parent / "shared/data")
    monkeypatch.setenv("LIGHTNING_ADAPTERS_DATA", data)
    from lightning_adapters.tasks.finance_sentiment import FinanceSentimentDataModule

    module = FinanceSentimentDataModule(data_dir="${LIGHTNING_ADAPTERS_DATA}/financial_phrasebank")
    assert sum(len(split[0]) for split in module.splits.values()) == 2264  # AllAgree, not the 300-row sample
