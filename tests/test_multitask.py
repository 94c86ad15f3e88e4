"""Multi-task learning on one base (issue 12, scope 5): `MultiTaskDataModule` mixes several tasks' DataModules, an
``AdapterModule(tasks=...)`` trains one adapter per task on the mixed batches, and each task is scored, predicted and
exported on its own. The task mixture is exact arithmetic (odds, one pass, seeded order); each exported adapter,
loaded alone on a fresh base, gives what the multi-task module gives for its rows."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from test_cli import WORDS, write_split

from lightning_adapters import (
    AdapterModule,
    Augmentation,
    Lora,
    MultiTaskDataModule,
    TaskAdapter,
    TextClassificationDataModule,
    UserInputError,
)
from lightning_adapters.cli import main
from lightning_adapters.data.multitask import MixtureBatchSampler, TaskRows, task_odds
from lightning_adapters.module import load_adapter
from lightning_adapters.tasks.conll2003 import Conll2003DataModule

INTENTS = ["billing", "cards", "transfer"]


def write_intents(path: Path, rows: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    lines = ["text,label"]
    for i in range(rows):
        words = [WORDS[j] for j in torch.randint(0, 20, (4,), generator=generator).tolist()]
        lines.append(f"{' '.join(words)} {['order', 'card', 'loan'][i % 3]},{INTENTS[i % 3]}")
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def task_files(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for name, write in (("sentiment", write_split), ("intent", write_intents)):
        folder = tmp_path / name
        folder.mkdir()
        for split, rows, seed in (("train", 24 if name == "sentiment" else 12, 0), ("validation", 6, 1),
                                  ("test", 6, 2)):
            write(folder / f"{split}.csv", rows, seed)
    return tmp_path


def files(root: Path, name: str) -> dict[str, str]:
    return {f"{split}_file": str(root / name / f"{split}.csv") for split in ("train", "validation", "test")}


# ---- the mixture -----------------------------------------------------------------------------------------------
def test_task_odds_are_proportional_uniform_or_tempered():
    assert task_odds([300, 100], "proportional", 2.0) == pytest.approx([0.75, 0.25])
    assert task_odds([300, 100], "uniform", 2.0) == pytest.approx([0.5, 0.5])
    assert task_odds([400, 100], "temperature", 2.0) == pytest.approx([20 / 30, 10 / 30])  # sqrt(400):sqrt(100)


@pytest.mark.parametrize("one_task_per_batch", [False, True])
def test_proportional_sampling_is_every_row_once_an_epoch_in_a_seeded_order(one_task_per_batch):
    sampler = MixtureBatchSampler([10, 7], [10 / 17, 7 / 17], batch_size=4, seed=3, exact_pass=True,
                                  one_task_per_batch=one_task_per_batch)
    epoch0 = list(sampler)
    assert sorted(i for batch in epoch0 for i in batch) == list(range(17)) and len(epoch0) == len(sampler)
    if one_task_per_batch:  # rows 0-9 are the first task's, 10-16 the second's
        assert all(len({i >= 10 for i in batch}) == 1 for batch in epoch0)
    assert list(sampler) == epoch0  # the same epoch again: the same order
    sampler.set_epoch(1)
    assert list(sampler) != epoch0


@pytest.mark.parametrize("one_task_per_batch", [False, True])
def test_uniform_sampling_draws_each_task_about_equally_whatever_its_size(one_task_per_batch):
    sampler = MixtureBatchSampler([900, 100], task_odds([900, 100], "uniform", 2.0), batch_size=10, seed=0,
                                  exact_pass=False, one_task_per_batch=one_task_per_batch)
    rows = [i for batch in sampler for i in batch]
    small = sum(i >= 900 for i in rows)
    assert len(rows) >= 1000 and abs(small / len(rows) - 0.5) < 0.06  # binomial sd ~ 0.016 (rows), 0.05 (batches)
    assert Counter(i for i in rows if i >= 900).most_common(1)[0][1] >= 4  # the small task repeats its rows


def test_task_rows_hand_out_each_tasks_items_with_its_index():
    rows = TaskRows([["a", "b"], ["c"], ["d", "e"]])
    assert [rows[i] for i in range(len(rows))] == [(0, "a"), (0, "b"), (1, "c"), (2, "d"), (2, "e")]
    assert rows[[4, 0]] == [(2, "e"), (0, "a")]


# ---- the end-to-end run -----------------------------------------------------------------------------------------
def write_multitask_config(root: Path, model_dir: str, **data_options) -> Path:
    config = {
        "seed_everything": 5, "test_after_fit": True, "export_dir": str(root / "adapters"),
        "trainer": {"max_epochs": 2, "accelerator": "cpu", "log_every_n_steps": 1, "enable_progress_bar": False,
                    "enable_model_summary": False, "default_root_dir": str(root / "runs"),
                    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                               "init_args": {"save_dir": str(root / "runs")}}},
        "model": {"class_path": "lightning_adapters.AdapterModule",
                  "init_args": {"backbone": model_dir, "learning_rate": 0.01, "adapter_name": "sentiment",
                                "strategy": {"class_path": "lightning_adapters.Bottleneck"},
                                "tasks": {"intent": {"strategy": {"class_path": "lightning_adapters.Lora",
                                                                  "init_args": {"r": 4}}}}}},
        "data": {"class_path": "lightning_adapters.MultiTaskDataModule",
                 "init_args": {"batch_size": 8, "sampling": "temperature", **data_options, "tasks": {
                     name: {"class_path": "lightning_adapters.TextClassificationDataModule",
                            "init_args": {**files(root, name), "max_length": 16}}
                     for name in ("sentiment", "intent")}}},
    }
    path = root / "multitask.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_two_tasks_train_together_and_each_exported_adapter_reproduces_its_task_alone(task_files, model_dirs,
                                                                                       capsys):
    config = write_multitask_config(task_files, model_dirs["bert"])
    main(["fit", "--config", str(config)])
    out = capsys.readouterr().out
    assert "test_sentiment_macro_f1" in out and "test_intent_macro_f1" in out
    run = task_files / "runs/lightning_logs/version_0"
    best = next((run / "checkpoints").glob("best-*-val_loss=*.ckpt"))  # several tasks: judged by their summed loss
    assert sorted(p.name for p in (task_files / "adapters").iterdir()) == ["intent", "sentiment"]

    main(["predict", "--config", str(config), "--ckpt_path", str(best)])
    rows = [json.loads(line) for line in (task_files / "runs/lightning_logs/version_1/predictions.jsonl").open()]
    # each task's test split in turn, in the data's order (yaml.safe_dump sorted the task names)
    assert [row["adapter"] for row in rows] == ["intent"] * 6 + ["sentiment"] * 6
    assert {row["label"] for row in rows[:6]} <= set(INTENTS)

    checkpoint = torch.load(best, weights_only=False)
    module = AdapterModule(model_dirs["bert"], adapter_name="sentiment", tasks={"intent": _lora()},
                           task_labels={"sentiment": ["negative", "neutral", "positive"], "intent": INTENTS})
    module.load_state_dict(checkpoint["state_dict"], strict=False)
    module.eval()
    data = MultiTaskDataModule({name: TextClassificationDataModule(tokenizer=model_dirs["bert"], max_length=16,
                                                                   **files(task_files, name))
                                for name in ("sentiment", "intent")}, tokenizer=model_dirs["bert"], batch_size=8)
    data.setup("test")
    with torch.no_grad():
        for batch in data.test_dataloader():
            name = batch["adapter_names"][0]
            together = module(batch)[name][1]
            alone = load_adapter(task_files / "adapters" / name, backbone=model_dirs["bert"]).eval()
            plain = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask")}
            assert torch.allclose(alone(plain), together, atol=1e-5), name


def _lora() -> TaskAdapter:
    return TaskAdapter(strategy=Lora(r=4))


def test_a_resumed_multitask_run_is_exact(task_files, model_dirs):
    config = write_multitask_config(task_files, model_dirs["bert"], mix="batches")
    args = ["fit", "--config", str(config), "--test_after_fit", "false", "--trainer.max_epochs", "3"]
    main(args)
    straight = torch.load(task_files / "runs/lightning_logs/version_0/checkpoints/last.ckpt", weights_only=True)
    stop = {"class_path": "test_cli.StopAfterEpochs", "init_args": {"epochs": 1}}
    main([*args, "--trainer.callbacks+", json.dumps(stop)])
    main([*args, "--ckpt_path", "last"])
    resumed = torch.load(task_files / "runs/lightning_logs/version_1/checkpoints/last.ckpt", weights_only=True)
    assert resumed["global_step"] == straight["global_step"]
    assert all(torch.equal(straight["state_dict"][k], resumed["state_dict"][k]) for k in straight["state_dict"])


# ---- bad input ------------------------------------------------------------------------------------------------
def test_tasks_that_do_not_match_the_models_adapters_are_refused_in_one_line(model_dirs):
    with pytest.raises(UserInputError, match="the data's tasks are sentiment, intent, the model's adapters default, "
                                             "intent — name the model's own adapter"):
        AdapterModule(model_dirs["bert"], tasks={"intent": _lora()},
                      task_labels={"sentiment": ["a", "b"], "intent": INTENTS})
    with pytest.raises(UserInputError, match="adapter name 'intent' is given twice"):
        AdapterModule(model_dirs["bert"], adapter_name="intent", tasks={"intent": _lora()})
    with pytest.raises(UserInputError, match="label_names .* clash with the data's labels of task 'sentiment'"):
        AdapterModule(model_dirs["bert"], adapter_name="sentiment", label_names=["x", "y"], tasks={"intent": _lora()},
                      task_labels={"sentiment": ["a", "b"], "intent": INTENTS})


def test_bad_mixtures_are_refused_in_one_line(task_files, model_dirs):
    sentiment = TextClassificationDataModule(tokenizer=model_dirs["bert"], **files(task_files, "sentiment"))
    with pytest.raises(UserInputError, match="needs at least one task"):
        MultiTaskDataModule({}, tokenizer=model_dirs["bert"])
    with pytest.raises(UserInputError, match="unknown sampling 'balanced' — use one of proportional, uniform"):
        MultiTaskDataModule({"sentiment": sentiment}, tokenizer=model_dirs["bert"], sampling="balanced")
    with pytest.raises(UserInputError, match="temperature=0.0 is out of range"):
        MultiTaskDataModule({"sentiment": sentiment}, tokenizer=model_dirs["bert"], sampling="temperature",
                            temperature=0.0)
    with pytest.raises(UserInputError, match="adapter name '2nd' must be a word"):
        MultiTaskDataModule({"2nd": sentiment}, tokenizer=model_dirs["bert"])
    ner = Conll2003DataModule(tokenizer=model_dirs["bert"])
    with pytest.raises(UserInputError, match="cannot share a batch — set mix: batches"):
        MultiTaskDataModule({"sentiment": sentiment, "ner": ner}, tokenizer=model_dirs["bert"], mix="rows")
    MultiTaskDataModule({"sentiment": sentiment, "ner": ner}, tokenizer=model_dirs["bert"], mix="batches")
    augmented = TextClassificationDataModule(tokenizer=model_dirs["bert"], augment=Augmentation(swap=0.1),
                                             **files(task_files, "sentiment"))
    with pytest.raises(UserInputError, match="task 'sentiment' sets augment, which mixed-task training does not"):
        MultiTaskDataModule({"sentiment": augmented}, tokenizer=model_dirs["bert"])
    intent = files(task_files, "intent")
    no_validation = TextClassificationDataModule(tokenizer=model_dirs["bert"], validation_fraction=0.0,
                                                 train_file=intent["train_file"], test_file=intent["test_file"])
    data = MultiTaskDataModule({"sentiment": sentiment, "intent": no_validation}, tokenizer=model_dirs["bert"])
    data.setup("fit")
    with pytest.raises(UserInputError, match="task 'intent' has no validation data"):
        data.val_dataloader()
