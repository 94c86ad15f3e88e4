"""One trainer block for every task: the CLI's default callbacks, and BestCheckpoint / EarlyStopping watching the task
head's own validation metric in its direction — decided exactly as Lightning's callbacks told that metric would."""

from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from lightning.pytorch import callbacks
from test_cli import workdir, write_config  # noqa: F401 — the fixture and the tiny config

from lightning_adapters import (
    AdapterModule,
    BestCheckpoint,
    ClassificationHead,
    EarlyStopping,
    GenerationHead,
    QuestionAnsweringHead,
    TokenClassificationHead,
)
from lightning_adapters.cli import main

HEADS = [(ClassificationHead(), "val_macro_f1", "max"), (TokenClassificationHead(), "val_f1", "max"),
         (QuestionAnsweringHead(), "val_f1", "max"),
         (GenerationHead(metrics=["rouge", "perplexity"]), "val_perplexity", "min"),
         (GenerationHead(metrics=["rouge"]), "val_loss", "min")]


def module_with(head) -> SimpleNamespace:
    """What `AdapterModule.monitor` reads of a module training one adapter with ``head``."""
    module = SimpleNamespace(task_head=head, trained_adapters=["default"])
    module.monitor = lambda: AdapterModule.monitor(module)
    return module


@pytest.mark.parametrize(("head", "metric", "mode"), HEADS)
def test_early_stopping_without_a_monitor_decides_as_lightnings_told_the_heads_metric(head, metric, mode):
    ours = EarlyStopping(patience=2, min_delta=0.05)
    ours._resolve_head_monitor(module_with(head))
    reference = callbacks.EarlyStopping(monitor=metric, mode=mode, patience=2, min_delta=0.05)
    assert (ours.monitor, ours.mode, ours.min_delta) == (reference.monitor, reference.mode, reference.min_delta)
    scores = [0.5, 0.53, 0.6, 0.62, 0.7, 0.4, 0.41, 0.42, 0.43]
    decisions = [[callback._evaluate_stopping_criteria(torch.tensor(s))[0] for s in scores]
                 for callback in (ours, reference)]
    assert decisions[0] == decisions[1] and any(decisions[0])
    assert float(ours.best_score) == float(reference.best_score)


def test_an_explicit_monitor_or_mode_is_kept():
    stopping = EarlyStopping(monitor="val_accuracy", mode="max")
    stopping._resolve_head_monitor(module_with(ClassificationHead()))
    assert (stopping.monitor, stopping.mode) == ("val_accuracy", "max")
    stopping = EarlyStopping(mode="min")  # the head's metric, in the direction asked for
    stopping._resolve_head_monitor(module_with(ClassificationHead()))
    assert (stopping.monitor, stopping.mode, float(stopping.best_score)) == ("val_macro_f1", "min", float("inf"))
    checkpoint = BestCheckpoint(monitor="val_loss", filename="mine-{epoch}")
    checkpoint._resolve_head_monitor(module_with(ClassificationHead()))
    assert (checkpoint.monitor, checkpoint.mode, checkpoint.filename) == ("val_loss", "min", "mine-{epoch}")


@pytest.mark.parametrize(("head", "metric", "mode"), HEADS)
def test_best_checkpoint_without_a_monitor_matches_lightnings_told_the_heads_metric(head, metric, mode):
    ours = BestCheckpoint()
    ours._resolve_head_monitor(module_with(head))
    reference = callbacks.ModelCheckpoint(monitor=metric, mode=mode,
                                         filename=f"best-{{epoch}}-{{step}}-{{{metric}:.3f}}")
    for name in ("monitor", "mode", "filename", "kth_value", "save_top_k"):
        assert getattr(ours, name) == getattr(reference, name), name
    assert ours.state_key.replace("BestCheckpoint", "ModelCheckpoint") == reference.state_key


def test_a_config_without_callbacks_gets_the_best_and_last_checkpoints_and_predictions(workdir, model_dirs):  # noqa: F811
    config = yaml.safe_load(write_config(workdir, model_dirs["bert"], **{"trainer.max_epochs": 3}).read_text())
    del config["trainer"]["callbacks"]
    config["trainer"]["default_root_dir"] = str(workdir / "runs")
    path = workdir / "bare.yaml"
    path.write_text(yaml.safe_dump(config))
    main(["fit", "--config", str(path)])
    run = workdir / "runs/tiny/version_0"
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    best = [n for n in names if n.startswith("best-")]
    assert len(best) == 1 and {"last.ckpt", "latest-epoch=2-step=18.ckpt"} <= set(names), names
    with open(run / "metrics.csv") as f:
        scores = [float(r["val_macro_f1"]) for r in csv.DictReader(f) if r.get("val_macro_f1")]
    state = next(v for k, v in torch.load(run / "checkpoints/last.ckpt", weights_only=False)["callbacks"].items()
                 if k.startswith("BestCheckpoint"))
    assert float(state["best_model_score"]) == pytest.approx(max(scores))
    epoch = scores.index(max(scores))  # 48 rows in batches of 8: 6 steps an epoch
    assert best[0] == f"best-epoch={epoch}-step={6 * (epoch + 1)}-val_macro_f1={max(scores):.3f}.ckpt"
    main(["predict", "--config", str(path), "--ckpt_path", str(run / "checkpoints/last.ckpt")])
    assert (workdir / "runs/tiny/version_1/predictions.jsonl").is_file()


def test_a_config_listing_callbacks_replaces_the_defaults(workdir, model_dirs):  # noqa: F811
    config = yaml.safe_load(write_config(workdir, model_dirs["bert"], **{"trainer.max_epochs": 1}).read_text())
    config["trainer"]["callbacks"] = [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                       "init_args": {"dirpath": str(workdir / "only"), "filename": "mine"}}]
    path = workdir / "only.yaml"
    path.write_text(yaml.safe_dump(config))
    main(["fit", "--config", str(path)])
    assert sorted(p.name for p in (workdir / "only").iterdir()) == ["mine.ckpt"]
    assert not (workdir / "runs/tiny/version_0/checkpoints").exists()


def test_a_shipped_config_appends_early_stopping_to_the_defaults(capsys):
    config = Path(__file__).resolve().parents[1] / "configs/finance_sentiment/bottleneck.yaml"
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(config), "--print_config"])
    trainer = yaml.safe_load(capsys.readouterr().out)["trainer"]
    assert [c["class_path"] for c in trainer["callbacks"]] == [
        "lightning_adapters.BestCheckpoint", "lightning.pytorch.callbacks.ModelCheckpoint",
        "lightning_adapters.JsonlPredictionWriter", "lightning_adapters.EarlyStopping"]
    assert trainer["callbacks"][3]["init_args"]["patience"] == 6 and trainer["accelerator"] == "auto"
