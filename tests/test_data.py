"""TextClassificationDataModule and the finance/customer-service packs: reading, checking, splitting, batching.

Hermetic: a word-piece tokenizer is written into a temp folder; real datasets are read from the shared data folder
(``LIGHTNING_ADAPTERS_DATA``) when present and skipped otherwise.
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from pathlib import Path

import datasets
import pandas as pd
import pytest
import torch
from conftest import CONFIGS, DATA_ROOT
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
from torch.utils.data import DistributedSampler
from transformers import BertTokenizerFast

from lightning_adapters.data import TextClassificationDataModule
from lightning_adapters.data.loaders import EpochShuffleSampler, LengthGroupedSampler, ResumableDataLoader
from lightning_adapters.errors import UserInputError
from lightning_adapters.heads.classification import ClassificationHead
from lightning_adapters.tasks.customer_service import CustomerServiceDataModule
from lightning_adapters.tasks.finance_sentiment import LABEL_NAMES, FinanceSentimentDataModule, read_phrasebank_txt

DATA = DATA_ROOT
PHRASEBANK, BANKING77 = DATA / "financial_phrasebank", DATA / "banking77"
PACKS = Path(__file__).resolve().parents[1] / "tasks"
WORDS = "the a company profit rose fell sharply in quarter sales bank card my is lost where refund".split()
ROWS = [("the company profit rose", "positive"), ("profit fell", "negative"), ("the quarter", "neutral"),
        ("sales rose sharply in the quarter", "positive"), ("the bank", "neutral"), ("profit fell sharply", "negative")]


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> str:
    """A BERT word-piece tokenizer folder that `load_tokenizer` reads without any download."""
    folder = tmp_path_factory.mktemp("tokenizer")
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    return str(folder)


def write(path: Path, rows, columns=("text", "label")) -> str:
    """Write rows in the format the extension names."""
    frame = pd.DataFrame(rows, columns=list(columns))
    if path.suffix in (".csv", ".tsv"):
        frame.to_csv(path, sep="\t" if path.suffix == ".tsv" else ",", index=False)
    elif path.suffix in (".jsonl", ".json"):
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_parquet(path)
    return str(path)


def module(tok: str, **kwargs) -> TextClassificationDataModule:
    return TextClassificationDataModule(tokenizer=tok, **kwargs)


# ---- reading -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".tsv", ".jsonl", ".json", ".parquet"])
def test_every_format_gives_the_same_examples_as_csv(suffix, tok, tmp_path):
    files = {s: write(tmp_path / f"train{s}", ROWS) for s in (".csv", suffix)}
    reference = module(tok, train_file=files[".csv"], test_file=files[".csv"], validation_file=files[".csv"])
    other = module(tok, train_file=files[suffix], test_file=files[suffix], validation_file=files[suffix])
    assert other.label_names == reference.label_names == ["negative", "neutral", "positive"]
    assert other.splits == reference.splits
    assert reference.splits["train"] == ([t for t, _ in ROWS], [2, 0, 1, 2, 1, 0], list(range(6)))


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_integer_labels_index_label_names(suffix, tok, tmp_path):
    rows = [(text, LABEL_NAMES.index(label)) for text, label in ROWS]
    path = write(tmp_path / f"train{suffix}", rows)
    data = module(tok, train_file=path, validation_file=path, test_file=path, label_names=LABEL_NAMES)
    assert data.splits["train"][1] == [2, 0, 1, 2, 1, 0]


def test_label_names_are_inferred_sorted(tok, tmp_path):
    words = module(tok, train_file=write(tmp_path / "w.csv", [("a", "b"), ("the", "c"), ("a", "a")]),
                   validation_fraction=0, test_fraction=0)
    numbers = module(tok, train_file=write(tmp_path / "n.csv", [("a", 10), ("the", 9), ("a", 2)]),
                     validation_fraction=0, test_fraction=0)
    assert words.label_names == ["a", "b", "c"] and words.splits["train"][1] == [1, 2, 0]
    assert numbers.label_names == ["2", "9", "10"] and numbers.splits["train"][1] == [2, 1, 0]


def test_hub_class_label_names_are_used(tok, monkeypatch):
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["neg", "neu", "pos"])})
    train = datasets.Dataset.from_dict({"text": [f"{t} {i}" for i in range(2) for t, _ in ROWS],
                                        "label": [2, 0, 1, 2, 1, 0] * 2}, features=features)
    monkeypatch.setattr(datasets, "load_dataset", lambda name, config: datasets.DatasetDict({"train": train}))
    data = module(tok, hub_dataset="someone/data", test_fraction=0.25, validation_fraction=0.34)
    assert data.label_names == ["neg", "neu", "pos"]
    assert [sorted(data.splits[s][1]) for s in ("train", "validation", "test")] == [[0, 0, 1, 1, 2, 2], [0, 1, 2],
                                                                                    [0, 1, 2]]


# ---- splitting ---------------------------------------------------------------------------------------------------
def big_train(tmp_path: Path) -> str:
    rows = [(f"the company {label} {i}", label) for label, n in (("negative", 50), ("neutral", 31), ("positive", 19))
            for i in range(n)]
    return write(tmp_path / "train.csv", rows)


def test_missing_splits_are_carved_stratified_deterministic_and_disjoint(tok, tmp_path):
    path = big_train(tmp_path)
    first, again = module(tok, train_file=path, test_fraction=0.2), module(tok, train_file=path, test_fraction=0.2)
    other_seed = module(tok, train_file=path, test_fraction=0.2, seed=7)
    assert first.splits == again.splits
    assert first.splits["test"] != other_seed.splits["test"]
    texts = {s: first.splits[s][0] for s in ("train", "validation", "test")}
    assert sum(map(len, texts.values())) == 100 and len(set().union(*texts.values())) == 100
    totals = {"negative": 50, "neutral": 31, "positive": 19}
    test = Counter(first.label_names[i] for i in first.splits["test"][1])
    validation = Counter(first.label_names[i] for i in first.splits["validation"][1])
    for label, n in totals.items():
        assert abs(test[label] - 0.2 * n) <= 1
        assert abs(validation[label] - 0.1 * (n - test[label])) <= 1


def test_given_splits_are_not_carved(tok, tmp_path):
    path, small = big_train(tmp_path), write(tmp_path / "v.csv", ROWS)
    data = module(tok, train_file=path, validation_file=small, test_file=small)
    assert len(data.splits["train"][0]) == 100 and data.splits["validation"][0] == [t for t, _ in ROWS]


# ---- batching ----------------------------------------------------------------------------------------------------
def test_batches_are_padded_to_their_longest_input_and_truncated(tok, tmp_path):
    path = write(tmp_path / "t.csv", ROWS)
    data = module(tok, train_file=path, validation_file=path, test_file=path, batch_size=2)
    data.setup("fit")
    batches = list(data.val_dataloader())
    assert set(batches[0]) == {"input_ids", "attention_mask", "labels"}
    # [CLS] + words + [SEP]: rows are 6, 4 | 4, 8 | 4, 5 tokens long
    assert [b["input_ids"].shape[1] for b in batches] == [6, 8, 5]
    assert [b["attention_mask"].sum(1).tolist() for b in batches] == [[6, 4], [4, 8], [4, 5]]
    assert batches[0]["input_ids"][1, 4:].tolist() == [0, 0]  # right-padded with [PAD] (id 0)
    assert batches[0]["labels"].dtype == torch.long and torch.cat([b["labels"] for b in batches]).tolist() == [
        2, 0, 1, 2, 1, 0]
    short = module(tok, train_file=path, validation_file=path, test_file=path, batch_size=2, max_length=4)
    short.setup("fit")
    assert all(b["input_ids"].shape[1] == 4 for b in short.val_dataloader())


def test_train_order_is_shuffled_and_reproducible(tok, tmp_path):
    path = big_train(tmp_path)
    orders = []
    for _ in range(2):
        data = module(tok, train_file=path, validation_file=path, test_file=path, batch_size=100)
        data.setup("fit")
        orders.append(next(iter(data.train_dataloader()))["labels"].tolist())
    assert orders[0] == orders[1] != sorted(orders[0]) == data.splits["train"][1]  # the file is sorted by label


@pytest.mark.parametrize("rows, group", [(103, 8), (96, 8), (7, 8), (200, 24)])
def test_length_grouped_sampler_is_a_seeded_permutation_of_full_groups(rows, group):
    lengths = torch.randint(3, 120, (rows,), generator=torch.Generator().manual_seed(rows)).tolist()
    sampler = LengthGroupedSampler(lengths, group, seed=5, window=3)
    sampler.set_epoch(1)
    order = list(sampler)
    assert sorted(order) == list(range(rows)) and len(sampler) == rows  # every row once
    assert order == list(sampler)  # a function of (seed, epoch) only
    sampler.set_epoch(2)
    assert (list(sampler) != order) is (rows > group)  # a single group is one sorted batch in every epoch
    groups = [order[i:i + group] for i in range(0, rows, group)]
    window = group * 3  # every group lies within one sorted window of the shuffled order: a narrow length range
    spread = [max(lengths[i] for i in g) - min(lengths[i] for i in g) for g in groups[:-1]]
    random_spread = [max(lengths[i:i + group]) - min(lengths[i:i + group]) for i in range(0, rows - group, group)]
    if rows >= 2 * window:
        assert sum(spread) < 0.5 * sum(random_spread), (spread, random_spread)


def test_group_by_length_pads_less_and_sees_every_row_once(tok, tmp_path):
    generator = torch.Generator().manual_seed(0)
    rows = [(" ".join(WORDS[j] for j in torch.randint(0, len(WORDS), (int(n),), generator=generator).tolist()),
             "positive" if n % 2 else "negative") for n in torch.randint(1, 40, (240,), generator=generator)]
    path = write(tmp_path / "t.csv", rows)

    def epoch(group_by_length: bool) -> tuple[list[int], int]:
        data = module(tok, train_file=path, validation_file=path, test_file=path, batch_size=8,
                      group_by_length=group_by_length)
        data.setup("fit")
        batches = list(data.train_dataloader())
        seen = sorted(t for b in batches for t in b["input_ids"].sum(1).tolist())
        return seen, sum(int((b["attention_mask"] == 0).sum()) for b in batches)

    shuffled_rows, shuffled_padding = epoch(False)
    grouped_rows, grouped_padding = epoch(True)
    assert grouped_rows == shuffled_rows  # the same rows, once each
    assert grouped_padding < 0.25 * shuffled_padding, (grouped_padding, shuffled_padding)


def test_predict_batches_carry_text_and_labels_only_when_given(tok, tmp_path):
    path = write(tmp_path / "t.csv", ROWS)
    texts = tmp_path / "p.jsonl"
    texts.write_text("".join(json.dumps({"text": t}) + "\n" for t, _ in ROWS[:3]))
    data = module(tok, train_file=path, validation_file=path, test_file=path, predict_file=str(texts))
    data.setup("predict")
    batch = next(iter(data.predict_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask", "text", "meta"} and batch["text"] == [t for t, _ in ROWS[:3]]
    fallback = module(tok, train_file=path, validation_file=path, test_file=path)
    fallback.setup("predict")
    batch = next(iter(fallback.predict_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask", "labels", "text", "meta"} and len(batch["text"]) == 6


# ---- bad input: one line naming the problem, nothing written ---------------------------------------------------
BAD = {
    "missing file": (None, "train_file not found: 'nope.csv'"),
    "empty file": ("", "is empty"),
    "header only": ("text,label\n", "is empty"),
    "missing text column": ("sentence,label\nthe bank,neutral\n", "no column 'text' (columns: sentence, label)"),
    "missing label column": ("text,sentiment\nthe bank,neutral\n", "no column 'label' (columns: text, sentiment)"),
    "unknown label": ("text,label\nthe bank,neutral\nprofit,great\n", "line 3: label 'great' is not one"),
    "malformed row": ("text,label\nthe bank,neutral\nprofit, rose,positive\n", "line 3: expected 2 fields"),
    "unterminated quote": ('text,label\nthe bank,neutral\n"profit,positive\n', "line 3: expected 2 fields"),
    "blank text": ("text,label\nthe bank,neutral\n  ,positive\n", "line 3: empty text in column 'text'"),
    "index out of range": ("text,label\nthe bank,1\nprofit,3\n", "line 3: label index 3 is out of range"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_csv_input_raises_one_line_and_writes_nothing(case, tok, tmp_path, monkeypatch):
    content, expected = BAD[case]
    monkeypatch.chdir(tmp_path)
    if content is not None:
        Path("nope.csv").write_text(content)
    before = sorted(os.listdir(tmp_path))
    labels = LABEL_NAMES if case in ("unknown label", "index out of range") else None
    with pytest.raises(UserInputError, match=expected.replace("(", r"\(").replace(")", r"\)")) as info:
        module(tok, train_file="nope.csv", label_names=labels)
    assert "\n" not in str(info.value) and " — " in str(info.value)
    assert sorted(os.listdir(tmp_path)) == before


@pytest.mark.parametrize(("name", "content", "expected"), [
    ("train.xlsx", "x", "unsupported file type '.xlsx'"),
    ("train.jsonl", '{"text": "the bank", "label": "a"}\n{"text": oops}\n', "line 2: invalid JSON"),
    ("train.parquet", "not parquet", "as parquet"),
    ("train.txt", "the bank@neutral\n", "unsupported file type '.txt'"),  # only the finance pack reads '@' files
])
def test_other_bad_files(name, content, expected, tok, tmp_path):
    (tmp_path / name).write_text(content)
    with pytest.raises(UserInputError, match=expected):
        module(tok, train_file=str(tmp_path / name))


def test_bad_settings(tok, tmp_path):
    with pytest.raises(UserInputError, match="test_fraction=1.5"):
        module(tok, train_file=write(tmp_path / "t.csv", ROWS), test_fraction=1.5)
    with pytest.raises(UserInputError, match="would leave an empty split"):
        module(tok, train_file=write(tmp_path / "t.csv", ROWS[:1]))
    with pytest.raises(UserInputError, match="no training data"):
        module(tok, predict_file=write(tmp_path / "t.csv", ROWS))


# ---- packs on the bundled samples and the real data -------------------------------------------------------------
def test_phrasebank_txt_reader_splits_on_the_last_at(tmp_path):
    path = tmp_path / "s.txt"
    path.write_bytes("Profit @ Nokia rose \xa35m .@positive\r\n\r\nSales fell .@negative\r\n".encode("latin-1"))
    table = read_phrasebank_txt(path)
    assert table.columns == {"sentence": ["Profit @ Nokia rose \xa35m .", "Sales fell ."],
                             "label": ["positive", "negative"]}
    assert table.lines == [1, 3]


@pytest.mark.parametrize("pack", ["finance_sentiment", "customer_service"])
def test_bundled_samples_load_with_valid_labels_and_no_text_in_two_splits(pack, tok):
    if not all((PACKS / pack / "sample" / f"{s}.csv").is_file() for s in ("train", "validation", "test")):
        pytest.skip(f"tasks/{pack}/sample/*.csv not written yet")
    cls = FinanceSentimentDataModule if pack == "finance_sentiment" else CustomerServiceDataModule
    data = cls(tokenizer=tok)  # loading checks every label against label_names
    texts = {split: set(data.splits[split][0]) for split in ("train", "validation", "test")}
    assert all(len(t) > 0 for t in texts.values())
    assert not (texts["train"] & texts["validation"] or texts["train"] & texts["test"]
                or texts["validation"] & texts["test"])
    assert set(sum((data.splits[s][1] for s in texts), [])) == set(range(len(data.label_names)))


needs_phrasebank = pytest.mark.skipif(not PHRASEBANK.is_dir(), reason=f"no Financial PhraseBank at {PHRASEBANK} "
                                      "(set LIGHTNING_ADAPTERS_DATA)")
needs_banking77 = pytest.mark.skipif(not BANKING77.is_dir(), reason=f"no BANKING77 at {BANKING77} "
                                     "(set LIGHTNING_ADAPTERS_DATA)")


@needs_phrasebank
def test_financial_phrasebank_allagree_counts_and_80_20_stratified_split(tok):
    data = FinanceSentimentDataModule(data_dir=str(PHRASEBANK), tokenizer=tok)
    labels = {s: Counter(data.label_names[i] for i in data.splits[s][1]) for s in ("train", "validation", "test")}
    assert sum(labels.values(), Counter()) == {"neutral": 1391, "positive": 570, "negative": 303}
    for label, n in {"neutral": 1391, "positive": 570, "negative": 303}.items():
        assert abs(labels["test"][label] - 0.2 * n) <= 1


@needs_phrasebank
def test_financial_phrasebank_original_txt_equals_csv(tok):
    txt = read_phrasebank_txt(PHRASEBANK / "original" / "Sentences_AllAgree.txt")
    with open(PHRASEBANK / "sentences_allagree.csv", newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    assert txt.columns == {"sentence": [r["sentence"] for r in rows], "label": [r["label"] for r in rows]}
    from_txt = FinanceSentimentDataModule(train_file=str(PHRASEBANK / "original" / "Sentences_AllAgree.txt"),
                                          tokenizer=tok)
    assert from_txt.splits == FinanceSentimentDataModule(data_dir=str(PHRASEBANK), tokenizer=tok).splits


@needs_banking77
def test_banking77_official_test_split_and_carved_validation(tok):
    data = CustomerServiceDataModule(data_dir=str(BANKING77), tokenizer=tok)
    assert len(data.label_names) == 77 and data.label_names == json.loads((BANKING77 / "categories.json").read_text())
    assert len(data.splits["test"][0]) == 3080
    assert len(data.splits["train"][0]) + len(data.splits["validation"][0]) == 10003
    assert abs(len(data.splits["validation"][0]) - 1000) <= 77 / 2


@needs_banking77
def test_customer_service_sample_uses_banking77_intent_names(tok):
    if not (PACKS / "customer_service" / "sample" / "train.csv").is_file():
        pytest.skip("tasks/customer_service/sample/*.csv not written yet")
    unknown = set(CustomerServiceDataModule(tokenizer=tok).label_names) - set(
        json.loads((BANKING77 / "categories.json").read_text()))
    assert not unknown, f"sample intents that BANKING77 does not have (check the spelling): {sorted(unknown)}"



# ---- packs take another file's columns and labels; class weights; per-class scores --------------------------------
def test_packs_take_the_generic_column_and_label_options(tok, tmp_path):
    rows = [(f"the company profit rose {i}", "bullish") for i in range(10)] + [
        (f"profit fell {i}", "bearish") for i in range(10)]
    path = write(tmp_path / "headlines.csv", rows, columns=("headline", "sentiment"))
    finance = FinanceSentimentDataModule(tokenizer=tok, train_file=path, text_column="headline",
                                         label_column="sentiment", label_names=["bearish", "bullish"])
    assert finance.label_names == ["bearish", "bullish"] and finance.splits["train"][0][0] in {t for t, _ in rows}
    with pytest.raises(UserInputError, match="label 'bullish' is not one of the label names \\(negative, neutral"):
        FinanceSentimentDataModule(tokenizer=tok, train_file=path, text_column="headline", label_column="sentiment")
    service = CustomerServiceDataModule(tokenizer=tok, train_file=path, text_column="headline",
                                        label_column="sentiment")
    assert service.label_names == ["bearish", "bullish"]


def test_label_counts_are_the_training_rows_per_label(tok, tmp_path):
    data = module(tok, train_file=big_train(tmp_path), test_fraction=0.2)
    train_labels = data.splits["train"][1]
    assert data.label_counts == [train_labels.count(i) for i in range(3)] and sum(data.label_counts) == len(
        train_labels)


def test_class_weights_scale_the_loss_and_balanced_uses_inverse_frequency():
    logits, batch = torch.randn(6, 3), {"labels": torch.tensor([0, 0, 0, 0, 1, 2])}
    plain, weighted = ClassificationHead(), ClassificationHead(class_weights=[1.0, 2.0, 0.5])
    balanced = ClassificationHead(class_weights="balanced", label_counts=[40, 10, 10])
    for head in (plain, weighted, balanced):
        head.build(CONFIGS["bert"], LABEL_NAMES)
    assert torch.allclose(plain.loss(logits, batch), torch.nn.functional.cross_entropy(logits, batch["labels"]))
    assert torch.allclose(weighted.loss(logits, batch), torch.nn.functional.cross_entropy(
        logits, batch["labels"], weight=torch.tensor([1.0, 2.0, 0.5])))
    assert balanced.loss_weights.tolist() == pytest.approx([0.5, 2.0, 2.0])  # 60 / (3 × count)
    for kwargs, message in (({"class_weights": [1.0, 2.0]}, "does not give one weight per label"),
                            ({"class_weights": "balanced"}, "needs the training label counts"),
                            ({"class_weights": "balanced", "label_counts": [5, 0, 1]}, "none of \\['neutral'\\]")):
        with pytest.raises(UserInputError, match=message):
            ClassificationHead(**kwargs).build(CONFIGS["bert"], LABEL_NAMES)


def test_classification_test_reports_precision_recall_f1_per_label():
    head = ClassificationHead()
    head.build(CONFIGS["bert"], LABEL_NAMES)
    logits = torch.nn.functional.one_hot(torch.tensor([0, 0, 1, 2]), 3).float()
    batch = {"labels": torch.tensor([0, 1, 1, 2])}
    results = {}
    for stage in ("val", "test"):
        metrics = head.metrics().clone(prefix=f"{stage}_")
        head.update_metrics(metrics, logits, batch, None, stage)
        results[stage] = {k: round(float(v), 4) for k, v in metrics.compute().items()}
    assert set(results["val"]) == {"val_accuracy", "val_macro_f1"}  # per label only at test: no flood per epoch
    assert results["test"]["test_precision_negative"] == 0.5 and results["test"]["test_recall_neutral"] == 0.5
    assert results["test"]["test_f1_negative"] == results["test"]["test_f1_neutral"] == 0.6667
    assert results["test"]["test_f1_positive"] == 1.0 and results["test"]["test_accuracy"] == 0.75


def test_a_distributed_wrapper_passes_the_epoch_to_our_sampler():
    """Lightning < 2.6 calls set_epoch on its DistributedSamplerWrapper only: the loader passes the epoch on, so each
    epoch still draws its own order (and augmentation its own edits) under DDP."""
    orders = []
    for epoch in (0, 1):
        inner = EpochShuffleSampler(8, seed=3)
        wrapper = DistributedSamplerWrapper(inner, num_replicas=2, rank=0, shuffle=False)
        DistributedSampler.set_epoch(wrapper, epoch)  # what the old wrapper did: its own epoch only
        orders.append([int(i) for batch in ResumableDataLoader(list(range(8)), batch_size=2, sampler=wrapper)
                       for i in batch])
        expected = EpochShuffleSampler(8, seed=3)
        expected.set_epoch(epoch)
        assert orders[-1] == list(expected)[0::2]  # rank 0's share of that epoch's order
    assert orders[0] != orders[1]
