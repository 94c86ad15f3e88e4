"""``lightning-adapters tune`` on a tiny BERT: trials are fit runs with the searched values, the best trial's adapter
is the one exported, pruning stops trials early, a killed study resumes, two workers share one study, and bad input
is one line with exit status 2 before any trial runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from test_cli import write_split

from lightning_adapters import load_adapter
from lightning_adapters.cli import main

optuna = pytest.importorskip("optuna")
pytest.importorskip("optuna_integration")
ROOT = Path(__file__).resolve().parents[1]
SPACE = {"params": {"model.init_args.learning_rate": {"low": 1.0e-3, "high": 5.0e-2, "log": True},
                    "model.init_args.strategy.init_args.r": {"choices": [2, 4]}},
         "sampler": {"n_startup_trials": 2}}


@pytest.fixture
def workdir(tmp_path, monkeypatch, model_dirs) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    for split, rows, seed in (("train", 48, 0), ("validation", 12, 1), ("test", 12, 2)):
        write_split(tmp_path / "data" / f"{split}.csv", rows, seed)
    config = {"seed_everything": 7,
              "trainer": {"max_epochs": 2, "accelerator": "cpu", "enable_progress_bar": False,
                          "enable_model_summary": False, "log_every_n_steps": 1},
              "model": {"class_path": "lightning_adapters.AdapterModule",
                        "init_args": {"backbone": model_dirs["bert"],
                                      "strategy": {"class_path": "lightning_adapters.Lora", "init_args": {"r": 2}}}},
              "data": {"class_path": "lightning_adapters.TextClassificationDataModule",
                       "init_args": {**{f"{split}_file": str(tmp_path / f"data/{split}.csv")
                                        for split in ("train", "validation", "test")},
                                     "batch_size": 8, "max_length": 16}}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    write_space(tmp_path / "space.yaml", SPACE)
    return tmp_path


def write_space(path: Path, space: dict) -> Path:
    path.write_text(yaml.safe_dump(space))
    return path


def tune(*extra: str, space: str = "space.yaml") -> list[str]:
    return ["tune", "--config", "config.yaml", "--search", space, *extra]


def test_trials_are_fit_runs_with_the_searched_values_and_the_best_adapter_is_exported(workdir, capsys):
    main(tune("--n-trials", "3", "--output", "out"))
    summary = json.loads((workdir / "out/summary.json").read_text())
    study = optuna.load_study(study_name="space", storage=f"sqlite:///{workdir / 'out/study.db'}")
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3 and summary["trials"]["COMPLETE"] == 3
    for trial in trials:  # each run's saved config holds the trial's values; its value is its best checkpoint's
        folder = Path(trial.user_attrs["run_folder"])
        (saved,) = folder.glob("lightning_logs/version_0/config.yaml")
        model = yaml.safe_load(saved.read_text())["model"]["init_args"]
        assert model["learning_rate"] == trial.params["model.init_args.learning_rate"]
        assert model["strategy"]["init_args"]["r"] == trial.params["model.init_args.strategy.init_args.r"]
        best_file = Path(trial.user_attrs["checkpoint"]).name  # best-{epoch}-{step}-{val_macro_f1:.3f}.ckpt
        assert float(best_file.rsplit("=", 1)[-1].removesuffix(".ckpt")) == pytest.approx(trial.value, abs=5e-4)
        assert trial.user_attrs["epochs"] == 2
    best = max(trials, key=lambda t: t.value)
    assert summary["best"]["trial"] == best.number and summary["best"]["value"] == best.value
    assert summary["best"]["params"] == best.params and summary["epochs"] == 6
    copied, trained = workdir / "out/best_adapter", Path(best.user_attrs["adapter"])
    assert sorted(p.name for p in copied.iterdir()) == sorted(p.name for p in trained.iterdir())
    for file in trained.iterdir():
        assert (copied / file.name).read_bytes() == file.read_bytes()
    strategy = json.loads((copied / "adapter_config.json").read_text())["strategy"]["init_args"]
    assert strategy["r"] == best.params["model.init_args.strategy.init_args.r"] and load_adapter(copied)
    assert (workdir / "out/history.png").stat().st_size > 0 and (workdir / "out/importances.png").is_file()
    table = (workdir / "out/trials.csv").read_text().splitlines()
    assert len(table) == 4 and "params_model.init_args.learning_rate" in table[0]
    assert f"best trial {best.number}" in capsys.readouterr().out
    main(tune("--n-trials", "3", "--output", "out"))  # done already: no new trial
    assert len(study.get_trials()) == 3


def test_test_after_fit_records_the_best_checkpoint_s_test_metrics(workdir):
    main(tune("--n-trials", "1", "--output", "out", "--test_after_fit", "true"))
    best = json.loads((workdir / "out/summary.json").read_text())["best"]
    card = (Path(best["run_folder"]) / "adapter/README.md").read_text()  # fit writes the test metrics on the card
    assert 0 <= best["test"]["test_macro_f1"] <= 1 and f"{best['test']['test_macro_f1']:.4f}"[:5] in card


def test_pruning_stops_trials_at_their_first_validation(workdir):
    space = write_space(workdir / "prune.yaml", {**SPACE, "pruner": {"type": "threshold", "lower": 2.0}})
    main(tune("--n-trials", "2", "--output", "pruned", "--trainer.max_epochs", "3", space=str(space)))
    main(tune("--n-trials", "2", "--output", "full", "--trainer.max_epochs", "3", "--no-pruning", space=str(space)))
    pruned, full = (json.loads((workdir / name / "summary.json").read_text()) for name in ("pruned", "full"))
    assert pruned["trials"]["PRUNED"] == 2 and pruned["epochs"] == 2 and "best" not in pruned  # val F1 < 2 always
    assert full["trials"]["COMPLETE"] == 2 and full["epochs"] == 6
    assert not (workdir / "pruned/best_adapter").exists()


@pytest.mark.parametrize(("change", "message"), [
    ({"params": {"model.init_args.no_such_option": {"low": 1, "high": 2}}},
     "search space key 'model.init_args.no_such_option'"),
    ({"params": {"model.init_args.learning_rate": {"low": 0.01, "high": 0.01}}}, "the range is empty"),
    ({"params": {"model.init_args.learning_rate": {"low": 0.0, "high": 0.1, "log": True}}},
     "a log range needs low > 0"),
    ({"params": {"model.init_args.strategy.init_args.r": {"choices": []}}}, "'choices' is empty"),
    ({"params": {}}, "has no 'params' mapping"),
    ({"params": {"trainer.max_epochs": {"low": 1, "hihg": 3}}}, "unknown field 'hihg'"),
    ({"pruner": {"type": "sometimes"}}, "unknown pruner type 'sometimes'"),
])
def test_a_bad_search_space_is_one_line_before_any_trial(workdir, capsys, change, message):
    space = write_space(workdir / "bad.yaml", {**SPACE, **change})
    with pytest.raises(SystemExit) as stop:
        main(tune("--n-trials", "1", "--output", "out", space=str(space)))
    error = capsys.readouterr().err
    assert stop.value.code == 2 and message in error and error.count("\n") == 1, error
    assert not (workdir / "out/trials").exists()


@pytest.mark.parametrize(("arguments", "message"), [
    (["--storage", "sqlite:////no/such/folder/study.db"], "cannot open the study storage"),
    (["--storage", "nosuchdb://host/x"], "cannot open the study storage 'nosuchdb://host/x'"),
    (["--storage", "journal:/no/such/folder/study.log"], "cannot open the study storage"),
    (["--model.init_args.learning_rat", "0.1"], "learning_rat"),
    (["--n-trials", "0"], "--n-trials and --heartbeat must be at least 1"),
])
def test_bad_options_are_one_line(workdir, capsys, arguments, message):
    argv = tune("--output", "out", *arguments)
    if "--n-trials" not in arguments:
        argv += ["--n-trials", "1"]
    with pytest.raises(SystemExit) as stop:
        main(argv)
    error = capsys.readouterr().err
    assert stop.value.code == 2 and message in error and error.count("\n") == 1, error
    assert not (workdir / "out/trials").exists()


def test_resuming_with_another_search_space_is_refused(workdir, capsys):
    main(tune("--n-trials", "1", "--output", "out", "--study", "s"))
    other = write_space(workdir / "other.yaml",
                        {"params": {"model.init_args.learning_rate": {"low": 0.1, "high": 0.2}}})
    with pytest.raises(SystemExit):
        main(tune("--n-trials", "2", "--output", "out", "--study", "s", space=str(other)))
    assert "study 's' was started with other params" in capsys.readouterr().err


def command(*extra: str) -> list[str]:
    return [sys.executable, "-m", "lightning_adapters.cli", *tune(*extra)]


def environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def test_a_study_killed_mid_trial_resumes_and_finishes(workdir):
    storage = f"sqlite:///{workdir / 'out/study.db'}"
    argv = command("--n-trials", "3", "--output", "out", "--heartbeat", "1", "--trainer.max_epochs", "6")
    first = subprocess.Popen(argv, env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    deadline = time.monotonic() + 120
    while not list(workdir.glob("out/trials/0/lightning_logs/version_0/checkpoints/latest-*")):  # mid-training
        assert first.poll() is None and time.monotonic() < deadline, "the first run did not get into a trial"
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    killed = optuna.load_study(study_name="space", storage=storage).get_trials()
    assert [t.state.name for t in killed] == ["RUNNING"]
    done = subprocess.run(argv, env=environment(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    trials = optuna.load_study(study_name="space", storage=storage).get_trials()
    assert trials[0].state.name == "FAIL" and sum(t.state.name == "COMPLETE" for t in trials) == 3
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert len(retried) == 1 and retried[0].params == trials[0].params  # run again with the same values
    assert json.loads((workdir / "out/summary.json").read_text())["trials"]["COMPLETE"] == 3


def test_two_workers_share_one_study_with_no_lost_or_duplicated_trial(workdir):
    argv = command("--n-trials", "4", "--output", "out", "--storage", f"journal:{workdir / 'study.log'}")
    workers = [subprocess.Popen(argv, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for _ in range(2)]
    logs = [worker.communicate(timeout=300)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], logs
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(workdir / "study.log")))
    trials = optuna.load_study(study_name="space", storage=storage).get_trials()
    assert 4 <= len(trials) <= 5 and all(t.state.name == "COMPLETE" for t in trials)  # one may start as the 4th ends
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    folders = [t.user_attrs["run_folder"] for t in trials]
    assert len(set(folders)) == len(trials)  # each trial ran once, in its own folder
    for trial in trials:
        (run,) = Path(trial.user_attrs["run_folder"]).glob("lightning_logs/version_*")  # not run twice
        assert (Path(trial.user_attrs["adapter"]) / "adapter_model.safetensors").is_file()
    assert all("adapter saved to" in log for log in logs)  # both workers ran trials
