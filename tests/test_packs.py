"""A domain pack is one folder: a new one, written into a temporary folder on the ``lightning_adapters.tasks`` path,
reads its bundled sample and its ``data_dir`` layout, lists its defaults in ``--data.help`` and trains nothing else:
no other file is edited. Also: what a pack declares is checked, and every shipped pack keeps its old options."""

from __future__ import annotations

import importlib
import inspect

import pytest

import lightning_adapters.tasks as tasks
from lightning_adapters.cli import main
from lightning_adapters.data.pack import Pack
from lightning_adapters.errors import UserInputError

PACK = '''"""Bank complaints by product (a pack written by a test)."""

from lightning_adapters.data import TextClassificationDataModule
from lightning_adapters.data.pack import Pack


class BankComplaintsDataModule(TextClassificationDataModule):
    """Bank complaints by product; without arguments, the bundled sample."""

    pack = Pack("Bank complaints", sample={"train_file": "train.csv", "test_file": "test.csv"},
                layout=lambda folder, options: {"train_file": str(folder / "complaints.csv")},
                defaults={"text_column": "complaint", "label_column": "product", "max_length": 64},
                docs={"text_column": "column holding the complaint."})
'''
ROWS = "complaint,product\n" + "".join(f"complaint {i} about my {p},{p}\n" for i in range(6)
                                       for p in ("card", "loan", "mortgage"))


@pytest.fixture
def new_pack(tmp_path, monkeypatch):
    folder = tmp_path / "bank_complaints"
    (folder / "sample").mkdir(parents=True)
    (folder / "__init__.py").write_text(PACK)
    (folder / "DATA_CARD.md").write_text("Written by a test.\n")
    for name in ("train.csv", "test.csv"):
        (folder / "sample" / name).write_text(ROWS)
    monkeypatch.setattr(tasks, "__path__", [*tasks.__path__, str(tmp_path)])
    yield importlib.import_module("lightning_adapters.tasks.bank_complaints").BankComplaintsDataModule
    importlib.sys.modules.pop("lightning_adapters.tasks.bank_complaints", None)


def test_a_new_classification_pack_is_one_folder(new_pack, model_dirs, tmp_path, capsys):
    data = new_pack(tokenizer=model_dirs["bert"], validation_fraction=1 / 3)
    assert data.label_names == ["card", "loan", "mortgage"] and data.text_column == "complaint"
    assert {split: len(rows[0]) for split, rows in data.splits.items()} == {"train": 12, "test": 18, "validation": 6}
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "complaints.csv").write_text(ROWS)
    real = new_pack(data_dir=str(tmp_path / "real"), tokenizer=model_dirs["bert"])
    assert real.data_dir == str(tmp_path / "real") and len(real.splits["test"][0]) == 3  # carved: 10% of each label
    with pytest.raises(UserInputError, match="pass only one of data_dir and train_file"):
        new_pack(data_dir=str(tmp_path / "real"), train_file="x.csv")
    with pytest.raises(SystemExit) as done:
        main(["fit", "--data.help", "lightning_adapters.tasks.bank_complaints.BankComplaintsDataModule"])
    assert done.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--data.data_dir" in help_text
    assert "column holding the complaint. (type: str, default: complaint)" in help_text
    assert "default: product" in help_text and "default: 64" in help_text


def test_a_pack_declaring_an_option_its_codec_lacks_is_refused():
    from lightning_adapters.data import TextClassificationDataModule

    with pytest.raises(TypeError, match="has no option"):
        type("Broken", (TextClassificationDataModule,), {"pack": Pack("x", sample={}, defaults={"colour": 1})})


@pytest.mark.parametrize("path", ["conll2003.Conll2003DataModule", "customer_service.CustomerServiceDataModule",
                                  "customer_support_replies.CustomerSupportRepliesDataModule",
                                  "dialogsum.DialogSumDataModule", "ectsum.ECTSumDataModule",
                                  "finance_ner.FinanceNerDataModule",
                                  "finance_sentiment.FinanceSentimentDataModule", "squad.SquadDataModule"])
def test_every_shipped_pack_is_a_declaration_with_data_dir_first(path):
    module, name = path.split(".")
    cls = getattr(importlib.import_module(f"lightning_adapters.tasks.{module}"), name)
    assert isinstance(cls.__dict__["pack"], Pack)
    assert list(inspect.signature(cls).parameters)[0] == "data_dir"
