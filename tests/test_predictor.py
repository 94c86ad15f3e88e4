"""`Predictor`: Python prediction equals ``lightning-adapters predict`` (the CLI, or the module's predict_step over the
DataModule's predict loader of a file) for classification, NER, QA and generation; its rows do not depend on the
batch size; bad input is one line."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from lightning import Trainer
from test_cli import workdir, write_config  # noqa: F401 — workdir is a fixture
from test_generation import lm_dirs  # noqa: F401 — a fixture: tiny LMs with their LM heads

from lightning_adapters import (
    AdapterModule,
    ClassificationHead,
    DialogueDataModule,
    GenerationHead,
    Lora,
    Predictor,
    QADataModule,
    QuestionAnsweringHead,
    SummarizationDataModule,
    TokenClassificationDataModule,
    TokenClassificationHead,
    UserInputError,
    save_adapter,
)
from lightning_adapters.cli import main

TEXTS = ["the company profit rose in the quarter", "bank card cut", "net sales fell and shares dropped",
         " ".join(["profit rose and sales grew"] * 8)]  # 40 words: past max_length=16, cut as the DataModule cuts
TAGS = ["O", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]
SENTENCES = [["the", "bank", "rose"], ["net", "profit", "of", "the", "company", "fell"], ["cash"] * 30]


def same_rows(got, expected, tol: float) -> None:
    """Equal JSON-like rows; floats within ``tol``."""
    if isinstance(expected, float) or isinstance(got, float):
        assert math.isclose(got, expected, abs_tol=tol), (got, expected)
    elif isinstance(expected, dict):
        assert isinstance(got, dict) and list(got) == list(expected), (got, expected)
        for key in expected:
            same_rows(got[key], expected[key], tol)
    elif isinstance(expected, list | tuple):
        assert len(got) == len(expected), (got, expected)
        for g, e in zip(got, expected, strict=True):
            same_rows(g, e, tol)
    else:
        assert got == expected, (got, expected)


def perturb(module: AdapterModule, seed: int = 1) -> AdapterModule:
    """Random adapter and head weights (a fresh adapter is often the identity): predictions that depend on them."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in module.trainable_parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.5)
    return module.eval()


def predict_file(module: AdapterModule, data) -> list[dict]:
    """What ``lightning-adapters predict`` writes for ``data``'s predict file: predict_step over its loader."""
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False)
    return [row for batch in trainer.predict(module, data) for row in batch]


# ---- equality with the CLI ----------------------------------------------------------------------------------------
def test_classification_rows_equal_the_cli_predict_rows_at_any_batch_size(workdir, model_dirs):  # noqa: F811
    config = write_config(workdir, model_dirs["bert"], **{"trainer.max_epochs": 1})
    main(["fit", "--config", str(config)])
    own = workdir / "own.csv"
    with open(own, "w", newline="") as file:
        csv.writer(file).writerows([["text"], *[[text] for text in TEXTS]])
    main(["predict", "--config", str(config), "--model.init_args.adapter", str(workdir / "adapter"),
          "--data.init_args.predict_file", str(own)])
    cli_rows = [json.loads(line) for line in (workdir / "predictions.jsonl").read_text().splitlines()]

    predictor = Predictor.from_adapter(workdir / "adapter", data_options={"max_length": 16})  # the run's max_length
    rows = predictor.predict(TEXTS)
    assert [row["label"] for row in rows] == [row["label"] for row in cli_rows]
    same_rows(rows, cli_rows, 1e-6)
    same_rows(predictor.predict([{"text": text} for text in TEXTS]), cli_rows, 1e-6)  # rows, not texts: the same
    assert predictor.predict(TEXTS[1]) == [rows[1] | {"id": 0}]  # one text: one row, its id its list index
    one_by_one = Predictor.from_adapter(workdir / "adapter", batch_size=1, data_options={"max_length": 16})
    same_rows(one_by_one.predict(TEXTS), rows, 1e-5)
    assert Predictor.from_adapter(workdir / "adapter").predict(TEXTS)[3] != rows[3]  # default max_length 128: uncut


def test_ner_rows_equal_the_predict_file_rows(model_dirs, tmp_path):
    module = perturb(AdapterModule(model_dirs["bert"], strategy=Lora(r=2), head=TokenClassificationHead(),
                                   label_names=TAGS))
    module.save_adapter(str(tmp_path / "ner"))
    (tmp_path / "own.txt").write_text("\n\n".join("\n".join(words) for words in SENTENCES) + "\n")
    data = TokenClassificationDataModule(model_dirs["bert"], predict_file=str(tmp_path / "own.txt"),
                                         label_names=TAGS, max_length=16, eval_batch_size=2)
    expected = predict_file(module, data)
    assert any(row["entities"] for row in expected) and expected[2]["tags"][-1] == "O"  # the 30-word one is cut

    predictor = Predictor.from_adapter(tmp_path / "ner", data_options={"max_length": 16})
    same_rows(predictor.predict([{"tokens": words} for words in SENTENCES]), expected, 0)
    same_rows(predictor.predict([" ".join(words) for words in SENTENCES]), expected, 0)  # texts: split at spaces
    entity = next(e for row in expected for e in row["entities"])
    assert set(entity) == {"type", "text", "start", "end", "word_start", "word_end"}


def test_qa_rows_equal_the_predict_file_rows_at_any_batch_size(model_dirs, tmp_path):
    module = perturb(AdapterModule(model_dirs["bert"], strategy=Lora(r=2), head=QuestionAnsweringHead()))
    module.save_adapter(str(tmp_path / "qa"))
    long_context = " ".join(["the bank cut its price and the company shares fell"] * 6)  # several windows
    questions = [{"id": "q1", "question": "what rose", "context": "the company profit rose in the quarter"},
                 {"id": "q2", "question": "who cut the price", "context": long_context},
                 {"id": "q3", "question": "what fell", "context": "net sales fell"}]
    squad = {"data": [{"title": "t", "paragraphs": [{"context": q["context"], "qas": [
        {"id": q["id"], "question": q["question"]}]} for q in questions]}]}
    (tmp_path / "own.json").write_text(json.dumps(squad))
    options = {"max_length": 24, "stride": 8}
    data = QADataModule(model_dirs["bert"], predict_file=str(tmp_path / "own.json"), eval_batch_size=2, **options)
    expected = predict_file(module, data)
    assert [row["id"] for row in expected] == ["q1", "q2", "q3"] and all(row["answer"] for row in expected)

    for batch_size in (1, 32):
        predictor = Predictor.from_adapter(tmp_path / "qa", batch_size=batch_size, data_options=options)
        same_rows(predictor.predict(questions), expected, 1e-4)  # scores are rounded to 4 places


def test_generation_rows_equal_the_predict_file_rows(lm_dirs, tmp_path):  # noqa: F811
    module = perturb(AdapterModule(lm_dirs["gpt2"], strategy=Lora(r=2), head=GenerationHead(max_new_tokens=4)))
    sources = ["the company profit rose in the quarter", "bank card cut", " ".join(["net sales fell"] * 10)]
    (tmp_path / "own.jsonl").write_text("".join(json.dumps({"source": s}) + "\n" for s in sources))
    options = {"max_source_length": 8}
    data = SummarizationDataModule(lm_dirs["gpt2"], predict_file=str(tmp_path / "own.jsonl"), eval_batch_size=2,
                                   **options)
    expected = predict_file(module, data)
    assert all(row["generated"] for row in expected)

    predictor = Predictor.from_module(module, data=SummarizationDataModule, data_options=options, batch_size=2)
    same_rows(predictor.predict(sources), expected, 0)
    with pytest.raises(UserInputError, match="pass data=SummarizationDataModule or data=DialogueDataModule"):
        Predictor.from_module(module)  # one head, two row formats: which one is the user's to say
    # an exported adapter whose card names its training data (as the CLI writes it) needs no data argument
    save_adapter(module, tmp_path / "summarizer",
                 card={"data": "`lightning_adapters.data.summarization.SummarizationDataModule`, train_file=x.jsonl"})
    same_rows(Predictor.from_adapter(tmp_path / "summarizer", data_options=options).predict(sources), expected, 0)

    requests = [{"instruction": "did the bank cut the price"}, {"instruction": "profit rose"}]
    (tmp_path / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in requests))
    chat = DialogueDataModule(lm_dirs["gpt2"], predict_file=str(tmp_path / "chat.jsonl"), max_length=16)
    same_rows(Predictor.from_module(module, data=chat).predict(requests), predict_file(module, chat), 0)


# ---- bad input: one line ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def classifier(model_dirs) -> Predictor:
    module = AdapterModule(model_dirs["bert"], strategy=Lora(r=2), head=ClassificationHead(),
                           label_names=["negative", "positive"])
    return Predictor.from_module(module)


@pytest.mark.parametrize(("inputs", "message"), [
    ([], "inputs is empty"),
    ([{"sentence": "profit rose"}], "no 'text' column (columns given: sentence)"),
    ([{"text": "profit rose"}, {"txt": "sales fell"}], "row 1 has columns (txt), row 0 has (text)"),
    (["profit rose", {"text": "sales fell"}], "input 1 is a dict but input 0 is a text"),
    ({"text": "profit rose"}, "inputs is one dict"),
    (42, "inputs is a int"),
    ([{"text": {"words": "profit rose"}}], "column 'text' holds a list"),
    ([{"text": "  "}], "predict rows row 0: empty text in column 'text'"),
])
def test_bad_inputs_are_one_line(classifier, inputs, message):
    with pytest.raises(UserInputError) as error:
        classifier.predict(inputs)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_dtype_casts_the_frozen_base_and_keeps_adapters_fp32(model_dirs):
    module = AdapterModule(model_dirs["bert"], strategy=Lora(r=2), head=ClassificationHead(), label_names=["a", "b"])
    predictor = Predictor.from_module(module, dtype="bfloat16", device=torch.device("cpu"))
    assert predictor.module.training is False
    assert {p.dtype for _, p in module.trainable_parameters()} == {torch.float32}
    assert {p.dtype for p in module.parameters() if not p.requires_grad} == {torch.bfloat16}
    rows = predictor.predict(TEXTS)
    assert len(rows) == 4 and all(abs(sum(row["probabilities"].values()) - 1) < 1e-4 for row in rows)


def test_bad_settings_are_one_line(classifier, model_dirs):
    module = classifier.module
    cases = [(lambda: Predictor.from_module(module, device="gpu"), "unknown device 'gpu'"),
             (lambda: Predictor.from_module(module, device=f"cuda:{torch.cuda.device_count()}"), "not on this machine"),
             (lambda: Predictor.from_module(module, batch_size=0), "batch_size=0 is out of range"),
             (lambda: Predictor.from_module(module, dtype="float8"), "unknown dtype 'float8'"),
             (lambda: Predictor.from_module(module, data=QADataModule), "does not fit QADataModule"),
             (lambda: Predictor.from_module(module, data=dict), "data must be a DataModule class or instance"),
             (lambda: Predictor.from_adapter(Path("no-such-folder")), "no adapter_config.json")]
    qa = Predictor.from_module(AdapterModule(model_dirs["bert"], strategy=Lora(r=2), head=QuestionAnsweringHead()))
    cases.append((lambda: qa.predict(["what rose"]), "reads rows of several fields, not plain texts"))
    cases.append((lambda: qa.predict([{"question": "what rose"}]), "no 'context' column (columns given: question)"))
    for build, message in cases:
        with pytest.raises(UserInputError) as error:
            build()
        assert message in str(error.value) and "\n" not in str(error.value), message
