"""Prediction rows point back at their input: a row ``id`` (the file's ``id`` column, else the 0-based row index)
and, where the split is labelled, the gold answer beside the prediction — for classification, NER and QA; a user's
own unlabelled file still predicts, without gold fields. Also: an epoch's metrics leave out what saw no data."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import torch
from lightning import Trainer
from torchmetrics.classification import MulticlassAccuracy

from lightning_adapters import AdapterModule, Lora
from lightning_adapters.data import TextClassificationDataModule
from lightning_adapters.data.qa_features import QACollator, example_meta
from lightning_adapters.data.squad_format import QAExample
from lightning_adapters.data.token_classification import TokenClassificationDataModule
from lightning_adapters.heads import ClassificationHead, TokenClassificationHead
from lightning_adapters.heads.base import EpochMetrics
from lightning_adapters.text_metrics import BLEU, Perplexity

LABELS = ["negative", "positive"]
TEXTS = ["profit rose", "sales fell", "shares grew", "loss weak", "net profit rose", "price cut"]
GOLD = ["positive", "negative", "positive", "negative", "positive", "negative"]
NER_TEST = "the O\ncompany B-ORG\nrose O\n\nbank B-ORG\nfell O\n\nlondon B-LOC\nprofit O\n"
NER_TRAIN = "company B-ORG\nbank I-ORG\nin O\nlondon B-LOC\n\nnet O\nprofit O\n"


def write_csv(path: Path, header: list[str], rows: list[list]) -> str:
    with open(path, "w", newline="") as file:
        csv.writer(file).writerows([header, *rows])
    return str(path)


def predict(model: AdapterModule, data) -> list[dict]:
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False)
    return [row for batch in trainer.predict(model, data) for row in batch]


def classifier(model_dir: str) -> AdapterModule:
    return AdapterModule(model_dir, strategy=Lora(r=2), head=ClassificationHead(), label_names=LABELS).eval()


def test_classification_rows_carry_row_ids_and_gold_labels_of_a_labelled_split(model_dirs, tmp_path):
    labelled = write_csv(tmp_path / "t.csv", ["text", "label"], [list(r) for r in zip(TEXTS, GOLD, strict=True)])
    data = TextClassificationDataModule(model_dirs["bert"], train_file=labelled, validation_file=labelled,
                                        test_file=labelled, label_names=LABELS, eval_batch_size=4)
    rows = predict(classifier(model_dirs["bert"]), data)  # no predict_file: the test split
    assert [r["id"] for r in rows] == list(range(6))  # 0-based data rows, in file order, across batches
    assert [r["gold_label"] for r in rows] == GOLD and [r["text"] for r in rows] == TEXTS
    assert all(r["label"] in LABELS for r in rows)


def test_classification_rows_of_an_unlabelled_own_file_have_its_ids_and_no_gold(model_dirs, tmp_path):
    labelled = write_csv(tmp_path / "t.csv", ["text", "label"], [list(r) for r in zip(TEXTS, GOLD, strict=True)])
    own = tmp_path / "own.jsonl"
    own.write_text("".join(json.dumps({"id": f"doc-{9 - i}", "text": t}) + "\n" for i, t in enumerate(TEXTS[:5])))
    data = TextClassificationDataModule(model_dirs["bert"], train_file=labelled, validation_file=labelled,
                                        test_file=labelled, predict_file=str(own), label_names=LABELS,
                                        eval_batch_size=2)
    rows = predict(classifier(model_dirs["bert"]), data)
    assert [r["id"] for r in rows] == [f"doc-{9 - i}" for i in range(5)]  # the file's own ids, in its order
    assert all("gold_label" not in r for r in rows) and [r["text"] for r in rows] == TEXTS[:5]


def test_ner_rows_carry_sentence_ids_and_gold_tags_only_where_labelled(model_dirs, tmp_path):
    (tmp_path / "train.txt").write_text(NER_TRAIN)
    (tmp_path / "test.txt").write_text(NER_TEST)
    (tmp_path / "own.txt").write_text("bank\nrose\n\nlondon\nfell\n")  # words only
    files = dict(train_file=str(tmp_path / "train.txt"), validation_file=str(tmp_path / "train.txt"),
                 test_file=str(tmp_path / "test.txt"), eval_batch_size=2)
    labelled = TokenClassificationDataModule(model_dirs["bert"], **files)
    model = AdapterModule(model_dirs["bert"], strategy=Lora(r=2), head=TokenClassificationHead(),
                          label_names=labelled.label_names).eval()
    rows = predict(model, labelled)
    gold = [[line.split()[1] for line in block.splitlines()] for block in NER_TEST.strip().split("\n\n")]
    assert [r["id"] for r in rows] == [0, 1, 2] and [r["gold_tags"] for r in rows] == gold
    assert [len(r["tags"]) for r in rows] == [len(g) for g in gold]
    own = TokenClassificationDataModule(model_dirs["bert"], predict_file=str(tmp_path / "own.txt"), **files)
    rows = predict(model, own)
    assert [(r["id"], r["words"]) for r in rows] == [(0, ["bank", "rose"]), (1, ["london", "fell"])]
    assert all("gold_tags" not in r for r in rows)


def test_carved_rows_keep_the_row_index_of_the_file_they_came_from(model_dirs, tmp_path):
    texts = [f"{w} rose" for w in ("profit", "sales", "shares", "net", "price", "cash", "bank", "card")]
    rows = [[t, LABELS[i % 2]] for i, t in enumerate(texts)]
    data = TextClassificationDataModule(model_dirs["bert"], train_file=write_csv(tmp_path / "t.csv", ["text", "label"],
                                                                                 rows), label_names=LABELS,
                                        test_fraction=0.25, validation_fraction=0.2)
    test_texts, _, ids = data.splits["test"]
    assert [texts[i] for i in ids] == test_texts and len(ids) == 2


def test_qa_rows_start_with_the_question_id_and_gold_answers_when_known():
    answered = QAExample("q1", "who?", "the bank", ["bank"], [4], "0:")
    unanswered = QAExample("q2", "what?", "the bank", [], [], "0:")
    assert example_meta(answered) == {"id": "q1", "gold_answers": ["bank"]}
    assert example_meta(unanswered) == {"id": "q2"}
    feature = {"input_ids": [1], "attention_mask": [1], "context_mask": [True], "offsets": [(0, 3)],
               "start_positions": 0, "end_positions": 0, "example_index": 0}
    batch = QACollator(0)([[feature | {"example": answered}], [feature | {"example_index": 1, "example": unanswered}]])
    assert batch["meta"] == [{"id": "q1", "gold_answers": ["bank"]}, {"id": "q2"}]


# ---- metrics that saw nothing are not logged ----------------------------------------------------------------------
def test_epoch_metrics_leave_out_metrics_without_updates_and_do_not_warn():
    metrics = EpochMetrics({"bleu": BLEU(), "perplexity": Perplexity(),
                            "accuracy": MulticlassAccuracy(2, average="micro")}).clone(prefix="val_")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torchmetrics warns when compute runs before any update
        assert metrics.compute() == {}
        metrics["perplexity"].update(torch.tensor(2.0), 2)
        assert set(metrics.compute()) == {"val_perplexity"}
    metrics.reset()
    metrics["accuracy"].update(torch.tensor([1, 0]), torch.tensor([1, 1]))
    result = metrics.compute()
    assert set(result) == {"val_accuracy"} and result["val_accuracy"].item() == 0.5


def test_perplexity_over_no_tokens_is_nothing_rather_than_nan():
    metric = Perplexity()
    metric.update(torch.tensor(0.0), 0)
    assert metric.compute() == {}
