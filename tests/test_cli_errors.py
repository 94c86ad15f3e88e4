"""Runs that would end badly end with one line and a non-zero status, before anything is written: Trainer settings
Lightning refuses, missing or cut-off checkpoints, a run that trains nothing, an unusable export folder, SIGTERM."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
from test_cli import workdir, write_config  # noqa: F401 — the fixture and the tiny config

from lightning_adapters.cli import main


def error_line(capsys, args: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("lightning-adapters: error: ")
    return lines[-1]


def test_a_trainer_setting_lightning_refuses_is_one_line(workdir, model_dirs, capsys):  # noqa: F811
    config = write_config(workdir, model_dirs["bert"])
    line = error_line(capsys, ["fit", "--config", str(config), "--trainer.strategy", "bogus"])
    assert "invalid Trainer setting" in line and "bogus" in line
    assert not (workdir / "ckpt").exists()


def test_a_missing_or_cut_off_checkpoint_is_one_line(workdir, model_dirs, capsys):  # noqa: F811
    config = write_config(workdir, model_dirs["bert"], **{"trainer.max_epochs": 1})
    for command in ("fit", "test", "predict"):
        line = error_line(capsys, [command, "--config", str(config), "--ckpt_path", str(workdir / "nope.ckpt")])
        assert "nope.ckpt' not found" in line
    main(["fit", "--config", str(config)])
    whole = (workdir / "ckpt" / "last.ckpt").read_bytes()
    (workdir / "cut.ckpt").write_bytes(whole[: len(whole) // 2])
    line = error_line(capsys, ["test", "--config", str(config), "--ckpt_path", str(workdir / "cut.ckpt")])
    assert "not a readable torch checkpoint" in line


def test_zero_epochs_is_refused_and_the_last_good_adapter_stays(workdir, model_dirs, capsys):  # noqa: F811
    config = write_config(workdir, model_dirs["bert"], **{"trainer.max_epochs": 1})
    main(["fit", "--config", str(config)])
    before = (workdir / "adapter" / "adapter_model.safetensors").read_bytes()
    line = error_line(capsys, ["fit", "--config", str(config), "--trainer.max_epochs", "0"])
    assert "trains nothing" in line
    assert (workdir / "adapter" / "adapter_model.safetensors").read_bytes() == before


def test_an_export_dir_that_cannot_take_the_adapter_is_refused_before_training(workdir, model_dirs, capsys):  # noqa: F811
    config = write_config(workdir, model_dirs["bert"])
    precious = workdir / "notes"
    precious.mkdir()
    (precious / "thesis.txt").write_text("keep me")
    line = error_line(capsys, ["fit", "--config", str(config), "--export_dir", str(precious)])
    assert "not part of an adapter folder" in line
    assert not (workdir / "ckpt").exists()  # refused before the first step
    assert (precious / "thesis.txt").read_text() == "keep me"


@pytest.mark.parametrize(("stop", "name"), [(signal.SIGTERM, "SIGTERM"), (signal.SIGINT, "SIGINT (Ctrl-C)")])
def test_a_signal_ends_the_run_with_a_non_zero_status_and_one_line(workdir, model_dirs, stop, name):  # noqa: F811
    config = write_config(workdir, model_dirs["bert"], **{"trainer.max_epochs": 1000})
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    # A shell that starts a job in the background (CI, nohup ... &) makes it ignore SIGINT, and a Python started
    # that way keeps ignoring it: give the run the default disposition a terminal's Ctrl-C meets.
    job = subprocess.Popen([sys.executable, "-m", "lightning_adapters.cli", "fit", "--config", str(config)],
                           cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    while not (workdir / "ckpt" / "last.ckpt").exists():  # training is under way
        assert job.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    job.send_signal(stop)
    err = job.communicate(timeout=120)[1]
    assert job.returncode == 128 + stop
    assert err.strip().splitlines()[-1].startswith(f"lightning-adapters: error: stopped by {name}")
    assert not (workdir / "adapter").exists()


@pytest.mark.parametrize("native", [False, True])
def test_bf16_on_a_cpu_without_bf16_instructions_warns(workdir, model_dirs, monkeypatch, native):  # noqa: F811
    monkeypatch.setattr("lightning_adapters.lightning_cli.cpu_has_bf16", lambda: native)
    config = write_config(workdir, model_dirs["bert"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main(["fit", "--config", str(config), "--trainer.precision", "bf16-mixed", "--trainer.max_steps", "1"])
    slow = [w for w in caught if "without bf16 instructions" in str(w.message)]
    assert len(slow) == (0 if native else 1)


@pytest.mark.parametrize(("extra", "expected"), [
    (["--model.init_args.learnin_rate", "0.1"], "--model: Option 'learnin_rate' is not accepted (given: 0.1) — see "
                                                "lightning-adapters fit --help (--model.help"),
    (["--model.init_args.strategy", "os.system"], "--model.strategy: Import path does not correspond to a subclass of "
                                                  "Strategy (given: os.system)"),
    (["--model.init_args.learning_rate", "fast"], "--model.learning_rate: Expected a <class 'float'>. Got value: fast"),
    (["--model.init_args.strategy", "lightning_adapters.Nope"], "--model.strategy: module 'lightning_adapters' has no "
                                                                "attribute 'Nope'"),
    (["--model.init_args.strategy.init_args.variant", "sideways"], "--model.strategy.variant: Expected a "
                                                                   "typing.Literal['houlsby', 'pfeiffer', 'parallel']"),
    (["--trainer.max_steps", "abc"], "--trainer.max_steps: Expected a <class 'int'>. Got value: abc"),
])
def test_parser_errors_are_one_line_naming_the_option_and_the_reason(workdir, model_dirs, capsys, extra,  # noqa: F811
                                                                    expected):
    config = write_config(workdir, model_dirs["bert"])
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), *extra])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err  # no usage block, no nested report


def test_a_config_file_that_is_not_yaml_is_named(workdir, model_dirs, capsys):  # noqa: F811
    config = write_config(workdir, model_dirs["bert"])
    bad = workdir / "override.yaml"
    bad.write_text("trainer:\n  max_epochs: 1\n\tfoo: 2\n")
    line = error_line(capsys, ["fit", "--config", str(config), "--config", str(bad)])
    assert f"--config {bad} is not valid YAML" in line and f'in "{bad}", line 3' in line


@pytest.mark.parametrize(("extra", "expected"), [
    (["--trainer.limit_train_batches", "0"], "trains nothing"),
    (["--trainer.accumulate_grad_batches", "0"], "accumulate_grad_batches must be at least 1"),
    (["--trainer.logger.init_args.save_dir", "BLOCKER/runs"], "is a file"),
    (["--export_dir", "BLOCKER/adapter"], "is a file"),
    (["--export_dir", "/proc/la-check/adapter"], "cannot create"),
])
def test_settings_that_train_nothing_or_cannot_write_are_refused_before_training(workdir, model_dirs, capsys,  # noqa: F811
                                                                                 extra, expected):
    config = write_config(workdir, model_dirs["bert"])
    (workdir / "BLOCKER").write_text("a file, not a folder")
    extra = [arg.replace("BLOCKER", str(workdir / "BLOCKER")) for arg in extra]
    line = error_line(capsys, ["fit", "--config", str(config), *extra])
    assert expected in line
    assert not (workdir / "ckpt").exists() and not (workdir / "runs").exists()  # refused before the first step


def test_checkpoints_that_are_not_ours_or_do_not_match_are_refused_before_anything_is_written(
        workdir, model_dirs, capsys):  # noqa: F811
    import torch

    config = write_config(workdir, model_dirs["bert"], **{"trainer.max_epochs": 1})
    torch.save({"foo": 1}, workdir / "plain.ckpt")
    line = error_line(capsys, ["test", "--config", str(config), "--ckpt_path", str(workdir / "plain.ckpt")])
    assert "not written by a lightning-adapters run" in line

    class Payload:  # what an attacker's pickle would carry: weights_only refuses to build it
        def __reduce__(self):
            return (print, ("payload ran",))

    torch.save({"pytorch-lightning_version": "2.6", "x": Payload()}, workdir / "evil.ckpt")
    line = error_line(capsys, ["test", "--config", str(config), "--ckpt_path", str(workdir / "evil.ckpt")])
    assert "cannot be read safely" in line and "payload ran" not in capsys.readouterr().out
    line = error_line(capsys, ["test", "--config", str(config), "--ckpt_path", "last"])
    assert "no run under" in line and "has checkpoints/last.ckpt" in line
    main(["fit", "--config", str(config)])
    runs = sorted((workdir / "runs" / "tiny").iterdir())
    saved = (runs[-1] / "config.yaml").read_bytes()
    line = error_line(capsys, ["fit", "--config", str(config), "--ckpt_path", str(workdir / "ckpt" / "last.ckpt"),
                               "--model.init_args.strategy", "lightning_adapters.Lora"])
    assert "checkpoint does not match this model" in line
    assert sorted((workdir / "runs" / "tiny").iterdir()) == runs and (runs[-1] / "config.yaml").read_bytes() == saved


@pytest.mark.parametrize(("head", "data", "needle"), [
    ("lightning_adapters.ClassificationHead", "lightning_adapters.tasks.squad.SquadDataModule", "'labels'"),
    ("lightning_adapters.TokenClassificationHead", "lightning_adapters.TextClassificationDataModule",
     "'labels' (tag id per token), the data gives it as class id per row"),
    ("lightning_adapters.GenerationHead", "lightning_adapters.tasks.conll2003.Conll2003DataModule", "'labels'"),
])
def test_a_head_that_does_not_fit_its_data_is_refused_before_loading(workdir, model_dirs, capsys, head, data, needle):  # noqa: F811, E501
    config = write_config(workdir, model_dirs["bert"])
    line = error_line(capsys, ["fit", "--config", str(config), "--model.init_args.head", head, "--data", data])
    assert "does not fit" in line and needle in line and "--model.init_args.head" in line
    assert not (workdir / "ckpt").exists()


@pytest.mark.parametrize(("old", "new"), [("token_data", "lightning_adapters.data.token_classification"),
                                          ("checkpoint", "lightning_adapters.adapter_folder"),
                                          ("seq2seq_data", "lightning_adapters.data.summarization")])
def test_a_module_path_from_before_the_data_package_names_where_it_went(workdir, model_dirs, capsys, old, new):  # noqa: F811
    with pytest.raises(ModuleNotFoundError, match=f"lightning_adapters.{old} has moved to {new}"):
        importlib.import_module(f"lightning_adapters.{old}")
    config = write_config(workdir, model_dirs["bert"])
    line = error_line(capsys, ["fit", "--config", str(config), "--data", f"lightning_adapters.{old}.SomeDataModule"])
    assert f"--data: lightning_adapters.{old} has moved to {new}" in line
    with pytest.raises(ModuleNotFoundError, match="No module named 'lightning_adapters.never_was'"):
        importlib.import_module("lightning_adapters.never_was")
    assert not (workdir / "ckpt").exists()
