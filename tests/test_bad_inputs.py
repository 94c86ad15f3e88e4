"""Input that used to turn into wrong data or a traceback: each gives one line naming the file, line and fix.

Every case here was silent (a repeated header, a "nan" label becoming a class, parquet bytes read as "b'...'", a
no-break space splitting a CoNLL token) or crashed (a huge CSV field, a folder as the prediction output, a file
named .gguf that is not one, a model that needs its own code, an input longer than the model's positions).
"""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from conftest import CONFIGS, build_tokenizer
from transformers import AutoModel

from lightning_adapters import JsonlPredictionWriter
from lightning_adapters.backbone import load_model, resolve
from lightning_adapters.cli import main
from lightning_adapters.data import TextClassificationDataModule
from lightning_adapters.data.conll_format import read_conll
from lightning_adapters.data.token_classification import TokenClassificationDataModule
from lightning_adapters.errors import UserInputError

LABELS = ["negative", "neutral", "positive"]


def one_line(info: pytest.ExceptionInfo) -> str:
    message = str(info.value)
    assert "\n" not in message and " — " in message, message
    return message


def load(tmp_path: Path, name: str, body: str | bytes, **kwargs) -> TextClassificationDataModule:
    path = tmp_path / name
    path.write_bytes(body if isinstance(body, bytes) else body.encode("utf-8"))
    return TextClassificationDataModule(tokenizer=kwargs.pop("tokenizer", "minilm"), train_file=str(path),
                                        validation_fraction=0, test_fraction=0, **kwargs)


# ---- tables: silent wrong data ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "body", "message"), [
    ("t.csv", "text,label,label\nthe bank,neutral,positive\n", "t.csv' line 1: column 'label' appears 2 times"),
    ("t.jsonl", '{"text": "a", "label": "neutral"}\n{"text": "b", "label": "x", "label": "positive"}\n',
     "t.jsonl' line 2: key 'label' appears twice"),
])
def test_a_repeated_column_is_refused_not_one_of_them_kept(name, body, message, tmp_path):
    with pytest.raises(UserInputError, match=message) as info:
        load(tmp_path, name, body)
    one_line(info)


def test_a_repeated_parquet_column_is_named(tmp_path):
    table = pa.Table.from_arrays([pa.array(["a", "b"]), pa.array(["x", "y"]), pa.array(["y", "x"])],
                                 names=["text", "label", "label"])
    pq.write_table(table, tmp_path / "t.parquet")
    with pytest.raises(UserInputError, match="column 'label' appears 2 times") as info:
        TextClassificationDataModule(train_file=str(tmp_path / "t.parquet"), validation_fraction=0, test_fraction=0)
    one_line(info)


@pytest.mark.parametrize(("name", "body", "message"), [
    ("t.csv", "text,label\nthe bank,neutral\nprofit,nan\n", "t.csv' line 3: label 'nan' looks like a missing value"),
    ("t.csv", "text,label\nthe bank,neutral\nprofit,NULL\n", "line 3: label 'NULL' looks like a missing value"),
    ("t.csv", "text,label\nthe bank,neutral\n\nprofit,\n", "t.csv' line 4: empty label — fill it in"),
    ("t.jsonl", '{"text": "a", "label": "neutral"}\n{"text": "b", "label": null}\n', "line 2: empty label"),
    ("t.jsonl", '{"text": "a", "label": "neutral"}\n{"text": "b", "label": ["positive"]}\n',
     r"line 2: column 'label' holds a list \(\['positive'\]\), not one value"),
    ("t.jsonl", '{"text": ["a", "b"], "label": "neutral"}\n', "line 1: column 'text' holds a list"),
])
def test_missing_or_list_labels_never_become_a_class(name, body, message, tmp_path):
    with pytest.raises(UserInputError, match=message) as info:
        load(tmp_path, name, body)
    one_line(info)


def test_nan_is_a_label_when_label_names_say_so(tmp_path):
    data = load(tmp_path, "t.csv", "text,label\nthe bank,nan\nprofit,ok\n", label_names=["ok", "nan"])
    assert data.splits["train"][1] == [1, 0]


def test_parquet_list_labels_are_refused(tmp_path):
    pq.write_table(pa.table({"text": ["a", "b"], "label": [["x"], ["y"]]}), tmp_path / "t.parquet")
    with pytest.raises(UserInputError, match="row 1: column 'label' holds a list") as info:
        TextClassificationDataModule(train_file=str(tmp_path / "t.parquet"), validation_fraction=0, test_fraction=0)
    one_line(info)


def test_parquet_bytes_are_read_as_text_not_as_their_repr(tmp_path):
    table = pa.table({"text": pa.array([b"the bank", "profit é".encode()], pa.binary()),
                      "label": pa.array([b"neutral", b"positive"], pa.binary())})
    pq.write_table(table, tmp_path / "t.parquet")
    data = TextClassificationDataModule(train_file=str(tmp_path / "t.parquet"), validation_fraction=0,
                                        test_fraction=0)
    assert data.splits["train"][0] == ["the bank", "profit é"] and data.label_names == ["neutral", "positive"]
    pq.write_table(pa.table({"text": pa.array([b"\xff\xfe"], pa.binary()), "label": ["a"]}), tmp_path / "b.parquet")
    with pytest.raises(UserInputError, match="row 1: column 'text' holds binary data, not UTF-8 text") as info:
        TextClassificationDataModule(train_file=str(tmp_path / "b.parquet"), validation_fraction=0, test_fraction=0)
    one_line(info)


def test_a_200k_character_field_is_read_and_the_csv_limit_restored(tmp_path):
    limit = csv.field_size_limit()
    data = load(tmp_path, "t.csv", "text,label\n" + "profit " * 30_000 + ",neutral\nthe bank,positive\n")
    assert len(data.splits["train"][0][0]) == 210_000 and csv.field_size_limit() == limit


# ---- the right line ----------------------------------------------------------------------------------------------
def test_a_label_typo_is_reported_on_its_own_line_in_the_file(tmp_path):
    # BOM, a quoted field over three lines, blank lines: the typo is on line 8 of the file
    body = '\ufefftext,label\n"the bank\nsaid\nprofit",neutral\n\nprofit rose,positive\n\nsales,postive\n'
    (tmp_path / "t.csv").write_text(body, encoding="utf-8")
    for fractions in ({}, {"test_fraction": 0.3}):  # also when splits are carved (checks run before carving)
        with pytest.raises(UserInputError, match="t.csv' line 8: label 'postive' is not one of the label names"):
            TextClassificationDataModule(train_file=str(tmp_path / "t.csv"), label_names=LABELS, **fractions)


def test_conll_line_numbers_ignore_unicode_line_separators(tmp_path):
    # U+0085 and U+2028 are line breaks to str.splitlines(), not to the file's author (or to conlleval)
    path = tmp_path / "train.txt"
    path.write_text("Nokia\x85Oyj B-ORG\nsaid O\n\nthe\u2028bank O\nrose B-COMPANY\n", encoding="utf-8")
    sentences = read_conll(path, "train_file")
    assert [s.words for s in sentences] == [["Nokia\x85Oyj", "said"], ["the\u2028bank", "rose"]]
    assert sentences[1].where(1) == "train_file line 5"


def test_a_no_break_space_stays_inside_its_conll_token(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("New\xa0York B-LOC\nrose O\n10\xa0000 NNP O\xa0\n", encoding="utf-8")
    (sentence,) = read_conll(path, "train_file")
    assert sentence.words == ["New\xa0York", "rose", "10\xa0000"] and sentence.tags == ["B-LOC", "O", "O"]
    path.write_text("New\xa0B-LOC\n", encoding="utf-8")  # the separator itself a no-break space: one column
    with pytest.raises(UserInputError, match="train_file line 1: 'New\xa0B-LOC' has no tag column"):
        read_conll(path, "train_file")


# ---- outputs and models ------------------------------------------------------------------------------------------
def test_prediction_output_that_is_a_folder_is_refused_before_predicting(tmp_path):
    writer = JsonlPredictionWriter(output=str(tmp_path))
    trainer = SimpleNamespace(global_rank=0, world_size=1, log_dir=None)
    with pytest.raises(UserInputError, match="is a folder — pass a file path") as info:
        writer.setup(trainer, None, "predict")
    one_line(info)
    writer.setup(trainer, None, "fit")  # only predict writes: fit with this callback is not refused
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserInputError, match="which is a file"):
        JsonlPredictionWriter(output=str(tmp_path / "file" / "p.jsonl")).setup(trainer, None, "predict")


def test_cli_predict_into_a_folder_exits_2_and_leaves_no_partial_file(model_dirs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "t.csv").write_text("text,label\n" + "".join(f"the bank {i},{LABELS[i % 3]}\n" for i in range(9)))
    config = {"trainer": {"accelerator": "cpu", "logger": False, "enable_progress_bar": False,
                          "callbacks": [{"class_path": "lightning_adapters.JsonlPredictionWriter",
                                         "init_args": {"output": str(tmp_path / "out")}}]},
              "model": {"class_path": "lightning_adapters.AdapterModule",
                        "init_args": {"backbone": model_dirs["bert"]}},
              "data": {"class_path": "lightning_adapters.TextClassificationDataModule",
                       "init_args": {"train_file": str(tmp_path / "t.csv"), "test_fraction": 0.34,
                                     "validation_fraction": 0}}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--config", str(tmp_path / "config.yaml")])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and "is a folder" in err, err
    assert sorted(tmp_path.rglob("*")) == before


def test_a_file_named_gguf_that_is_not_gguf_is_refused(tmp_path):
    (tmp_path / "model.gguf").write_text('{"model_type": "llama"}')
    with pytest.raises(UserInputError, match="is not a GGUF file") as info:
        resolve(str(tmp_path / "model.gguf"))
    one_line(info)


def test_a_model_that_needs_its_own_code_is_refused_naming_the_option(model_dirs, tmp_path):
    folder = tmp_path / "custom"
    AutoModel.from_pretrained(model_dirs["bert"]).save_pretrained(folder)
    build_tokenizer().save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config |= {"model_type": "my-bert", "auto_map": {"AutoConfig": "modeling_mine.MyConfig",
                                                     "AutoModel": "modeling_mine.MyModel"}}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "modeling_mine.py").write_text("raise RuntimeError('this code must not run')\n")
    with pytest.raises(UserInputError, match="set model.init_args.trust_remote_code: true") as info:
        load_model(str(folder), AutoModel)
    one_line(info)


@pytest.mark.parametrize(("damage", "message"), [
    ("weights", "the model files are incomplete or corrupt"),
    ("config", "the model folder is incomplete or corrupt"),
])
def test_a_damaged_model_folder_is_one_line_saying_so(damage, message, model_dirs, tmp_path):
    folder = tmp_path / "model"
    AutoModel.from_pretrained(model_dirs["bert"]).save_pretrained(folder)
    if damage == "weights":
        weights = folder / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    else:
        (folder / "config.json").write_text("{")
    with pytest.raises(UserInputError, match=message) as info:
        load_model(str(folder), AutoModel)
    one_line(info)


@pytest.mark.parametrize(("name", "message"), [
    ("minilm2", "'minilm2' is neither an alias (minilm, smollm2) nor a folder"),
    ("someorg/some-model", "pass an existing folder, an alias (minilm, smollm2) or a hub id you can reach"),
])
def test_an_unknown_model_name_says_what_a_backbone_may_be(name, message):
    with pytest.raises(UserInputError, match=re.escape(message)) as info:
        load_model(name, AutoModel)
    one_line(info)


def test_a_jsonl_line_nested_past_the_parser_is_one_line_naming_it(tmp_path):
    with pytest.raises(UserInputError, match="line 2: nests too deeply to be a row") as info:
        load(tmp_path, "t.jsonl", '{"text": "a", "label": "x"}\n' + "[" * 100_000 + "]" * 100_000 + "\n")
    one_line(info)


def test_a_yaml_alias_bomb_is_refused_before_parsing(tmp_path):
    from lightning_adapters.cli import check_yaml_size

    rows = ['l0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    rows += [f"l{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    (tmp_path / "bomb.yaml").write_text("\n".join(rows) + "\n")
    with pytest.raises(UserInputError, match="aliases that expand to more than 1,000,000 values"):
        check_yaml_size(["fit", "--config", str(tmp_path / "bomb.yaml")])
    real = Path(__file__).resolve().parents[1] / "configs" / "finance_sentiment" / "bottleneck.yaml"
    check_yaml_size(["fit", "--config", str(real)])  # a real config passes


# ---- inputs longer than the model's positions ----------------------------------------------------------------------
def test_max_length_past_the_model_positions_is_capped_and_truncation_counted(model_dirs, tmp_path, caplog):
    positions = CONFIGS["bert"].max_position_embeddings  # 128
    rows = [(" ".join(["profit"] * 300), "positive"), ("the bank", "neutral"), (" ".join(["loss"] * 130), "negative")]
    path = tmp_path / "t.csv"
    with open(path, "w", newline="") as file:
        csv.writer(file).writerows([("text", "label"), *rows])
    data = TextClassificationDataModule(tokenizer=model_dirs["bert"], train_file=str(path), validation_file=str(path),
                                        test_file=str(path), max_length=512)
    with caplog.at_level("INFO"):
        data.setup("fit")
    assert data.max_length == positions and data.truncated == {"train": 2, "validation": 2, "test": 2}
    assert f"using max_length={positions}" in caplog.text and "rows cut at max_length=128 tokens" in caplog.text
    batch = next(iter(data.val_dataloader()))
    model = AutoModel.from_pretrained(model_dirs["bert"])
    assert model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state.shape[1] == 128
    assert os.environ.get("HF_HUB_OFFLINE") == "1"


def test_ner_max_length_is_capped_at_the_model_positions(model_dirs, tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("".join(f"{word} O\n" for word in ["profit"] * 200) + "bank B-ORG\n")
    data = TokenClassificationDataModule(tokenizer=model_dirs["bert"], train_file=str(path), validation_file=str(path),
                                         max_length=1024)
    data.setup("fit")
    batch = next(iter(data.val_dataloader()))
    assert data.max_length == 128 and batch["input_ids"].shape[1] == 128 and batch["word_positions"][0, -1] == -1
    assert torch.is_tensor(batch["word_labels"])
