"""Summarisation data (the generation batch contract, truncation, bad input) and the DialogSum / ECTSum packs, down to
`lightning-adapters fit/test/predict` on tiny GPT-2 and T5 language models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import build_tokenizer
from test_generation import lm_dirs  # noqa: F401 — the session fixture of tiny LMs with their LM heads

from lightning_adapters.cli import main
from lightning_adapters.data.summarization import SummarizationDataModule, truncate_source
from lightning_adapters.errors import UserInputError
from lightning_adapters.tasks.dialogsum import DialogSumDataModule
from lightning_adapters.tasks.ectsum import ECTSumDataModule, numeric_sentences

ROWS = [{"doc": "the company profit rose in the quarter and shares grew", "summary": "profit rose"},
        {"doc": "bank card cut", "summary": "card cut"},
        {"doc": "net sales fell and shares dropped at the market", "summary": "sales fell"}]


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def data(tmp_path: Path, model_dir: str, rows=ROWS, **kwargs) -> SummarizationDataModule:
    file = write_jsonl(tmp_path / "train.jsonl", rows)
    options = dict(tokenizer=model_dir, train_file=file, validation_file=file, test_file=file, source_column="doc",
                   target_column="summary", id_column=None, prompt_template="{source} summary", batch_size=3)
    return SummarizationDataModule(**{**options, **kwargs})


def test_decoder_batches_train_on_the_target_and_prompt_ends_where_generation_starts(tmp_path, lm_dirs):  # noqa: F811
    module = data(tmp_path, lm_dirs["gpt2"])
    tok = build_tokenizer()
    batch = next(iter(module.val_dataloader()))
    assert set(batch) >= {"input_ids", "attention_mask", "labels", "prompt_input_ids", "prompt_attention_mask",
                          "references", "sources", "meta"}
    for row in range(3):
        length = int(batch["attention_mask"][row].sum())
        ids, labels = batch["input_ids"][row, :length].tolist(), batch["labels"][row, :length].tolist()
        prompt = tok(ROWS[row]["doc"] + " summary")["input_ids"]
        target = tok(" " + ROWS[row]["summary"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert ids == prompt + target
        assert labels == [-100] * len(prompt) + target
        assert batch["labels"][row, length:].eq(-100).all()  # right padding is never a target
        prompt_mask = batch["prompt_attention_mask"][row]
        assert prompt_mask[-1] == 1 and batch["prompt_input_ids"][row][prompt_mask.bool()].tolist() == prompt
    assert batch["references"] == [r["summary"] for r in ROWS] and batch["sources"] == [r["doc"] for r in ROWS]
    train = next(iter(module.train_dataloader()))
    assert set(train) == {"input_ids", "attention_mask", "labels"}


def test_encoder_decoder_batches_read_the_source_and_predict_the_target(tmp_path, lm_dirs):  # noqa: F811
    module = data(tmp_path, lm_dirs["t5"], prompt_template=None, max_target_length=2)
    tok = build_tokenizer()
    assert module.template == "summarize: {source}"
    batch = next(iter(module.test_dataloader()))
    assert "prompt_input_ids" not in batch
    first = tok("summarize: " + ROWS[0]["doc"])["input_ids"]
    assert batch["input_ids"][0, :len(first)].tolist() == first
    target = tok(text_target=ROWS[0]["summary"])["input_ids"]
    assert batch["labels"][0].tolist()[:2] == target[:1] + target[-1:]  # cut to 2 tokens, the end token kept


@pytest.mark.parametrize("mode", ["head", "tail", "head_tail"])
def test_truncation_keeps_original_text_within_the_token_budget(mode):
    tok = build_tokenizer()
    text = " ".join(["profit rose"] * 10 + ["bank card cut"] + ["sales fell"] * 10)
    cut = truncate_source(text, tok, 9, mode, "row 1")
    expected = {"head": "profit rose profit rose profit rose profit rose profit",
                "tail": "fell sales fell sales fell sales fell sales fell",
                "head_tail": "profit rose profit rose ... sales fell sales fell"}  # 4 + 4 tokens and the joint
    assert cut == expected[mode]
    assert truncate_source("bank card", tok, 9, "none", "row 1") == "bank card"


@pytest.mark.parametrize("case, message", [
    ("too_long", "train_file '{file}' line 1: the source has 10 tokens, more than max_source_length=4, and "
                 "truncation is 'none'"),
    ("empty_source", "line 2: empty text in column 'doc'"),
    ("empty_target", "line 3: empty text in column 'summary'"),
    ("missing_column", "has no column 'summary'"),
    ("template", "has no {source} field"),
    ("template_field", "has a field other than {source} ('text')"),
    ("truncation", "unknown truncation 'middle'"),
    ("chat_template", "has no chat template"),
])
def test_bad_input_is_one_clear_error(case, message, tmp_path, lm_dirs):  # noqa: F811
    rows = [dict(r) for r in ROWS]
    kwargs = {}
    if case == "too_long":
        kwargs = {"truncation": "none", "max_source_length": 4}
    elif case == "empty_source":
        rows[1]["doc"] = "  "
    elif case == "empty_target":
        rows[2]["summary"] = None
    elif case == "missing_column":
        rows = [{"doc": r["doc"]} for r in rows]
    elif case == "template":
        kwargs = {"prompt_template": "Summarize: {text}"}
    elif case == "template_field":
        kwargs = {"prompt_template": "{text}: {source}"}
    elif case == "truncation":
        kwargs = {"truncation": "middle"}
    elif case == "chat_template":
        kwargs = {"chat_template": True}
    with pytest.raises(UserInputError) as error:
        data(tmp_path, lm_dirs["gpt2"], rows, **kwargs)
    assert message.replace("{file}", str(tmp_path / "train.jsonl")) in str(error.value)
    assert "\n" not in str(error.value)


def test_dialogsum_sample_scores_the_test_split_against_all_three_references(lm_dirs):  # noqa: F811
    module = DialogSumDataModule(tokenizer=lm_dirs["gpt2"], eval_batch_size=4)
    assert {split: len(rows) for split, rows in module.splits.items()} == {"train": 10, "validation": 3, "test": 3}
    batch = next(iter(module.test_dataloader()))
    test = [json.loads(line) for line in open(Path(module.splits["test"][0]["where"].split("'")[1]))]
    assert batch["references"] == [[r["summary1"], r["summary2"], r["summary3"]] for r in test]
    assert batch["meta"] == [{"id": r["fname"], "fname": r["fname"]} for r in test]  # id_column: fname
    assert module.splits["test"][0]["target"] == test[0]["summary1"]  # the loss uses the first reference
    assert next(iter(module.val_dataloader()))["references"][0] == module.splits["validation"][0]["target"]
    with pytest.raises(UserInputError, match="has no dialogsum.train.jsonl or dialogsum.train.first4000.jsonl"):
        DialogSumDataModule(data_dir=str(Path(__file__).parent), tokenizer=lm_dirs["gpt2"])


def test_ectsum_keeps_numeric_sentences_then_truncates(lm_dirs):  # noqa: F811
    assert numeric_sentences("Hello all.\nRevenue rose 8 percent.\nThanks.\nEPS was $1.07.") == (
        "Revenue rose 8 percent.\nEPS was $1.07.")
    assert numeric_sentences("no figures here\nnone") == "no figures here\nnone"
    module = ECTSumDataModule(tokenizer=lm_dirs["gpt2"], max_source_length=40)
    row = module.splits["train"][0]
    item = module._datasets["train"][0]
    kept = numeric_sentences(row["source"])
    assert len(kept) < len(row["source"]) and item["source"] == row["source"]  # predictions echo the transcript
    assert len(item["prompt_ids"]) <= 40 + len(build_tokenizer()(module.template.format(source=""))["input_ids"])
    with pytest.raises(UserInputError, match=r"ectsum_train.jsonl' line 1: the source has \d+ tokens, more than "
                                             r"max_source_length=40, and truncation is 'none'"):
        ECTSumDataModule(tokenizer=lm_dirs["gpt2"], max_source_length=40, truncation="none")


def write_config(tmp_path: Path, model_dir: str, pack: str = "dialogsum", **data_args) -> Path:
    data_class = {"dialogsum": "lightning_adapters.tasks.dialogsum.DialogSumDataModule",
                  "ectsum": "lightning_adapters.tasks.ectsum.ECTSumDataModule"}[pack]
    config = {
        "seed_everything": 1, "test_after_fit": True, "export_dir": str(tmp_path / "adapter"),
        "trainer": {"max_epochs": 1, "accelerator": "cpu", "devices": 1, "log_every_n_steps": 1,
                    "enable_progress_bar": False, "enable_model_summary": False,
                    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                               "init_args": {"save_dir": str(tmp_path / "runs"), "name": "tiny"}},
                    "callbacks": [
                        # the head's own metric (TaskHead.monitor): Lightning raises if validation never logs it
                        {"class_path": "lightning_adapters.BestCheckpoint",
                         "init_args": {"dirpath": str(tmp_path / "ckpt")}},
                        {"class_path": "lightning_adapters.JsonlPredictionWriter",
                         "init_args": {"output": str(tmp_path / "predictions.jsonl")}}]},
        "model": {"class_path": "lightning_adapters.AdapterModule",
                  "init_args": {"backbone": model_dir, "learning_rate": 0.01,
                                "strategy": {"class_path": "lightning_adapters.Lora", "init_args": {"r": 4}},
                                "head": {"class_path": "lightning_adapters.heads.generation.GenerationHead",
                                         "init_args": {"max_new_tokens": 4, "generate_during_validation": True,
                                                       "metrics": ["rouge", "bleu", "perplexity"]}}}},
        "data": {"class_path": data_class, "init_args": {"batch_size": 4, "max_source_length": 48, **data_args}},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("family", ["gpt2", "t5"])
def test_cli_fit_test_predict(family, tmp_path, lm_dirs, capsys, monkeypatch):  # noqa: F811
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path, lm_dirs[family], prompt_template="{source} summary")
    main(["fit", "--config", str(config)])
    out = capsys.readouterr().out
    for metric in ("test_rouge1", "test_rouge2", "test_rougeL", "test_rougeLsum", "test_bleu", "test_perplexity"):
        assert metric in out
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    main(["predict", "--config", str(config), "--model.init_args.adapter", str(tmp_path / "adapter")])
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert [r["fname"] for r in rows] == ["test_0", "test_1", "test_2"]
    assert all(isinstance(r["generated"], str) and len(r["reference"]) == 3 and r["source"] for r in rows)


def test_cli_refuses_an_overlong_input_without_truncation_and_writes_nothing(tmp_path, lm_dirs, capsys, monkeypatch):  # noqa: F811
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path, lm_dirs["gpt2"], "ectsum", truncation="none", max_source_length=16)
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "more than max_source_length=16, and truncation is 'none'" in err
    assert sorted(tmp_path.rglob("*")) == before
