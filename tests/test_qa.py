"""Extractive QA: SQuAD scoring against hand-checked cases, exact span decoding against brute force, the reader's
errors, article-disjoint splits, windowed features, the head on every family x strategy, adapter round trip, CLI."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import DATA_ROOT, WORDS
from strategy_table import pick

from lightning_adapters import AdapterModule, load_adapter
from lightning_adapters.cli import main
from lightning_adapters.data.qa_features import answer_tokens
from lightning_adapters.data.question_answering import QADataModule
from lightning_adapters.data.splits import held_out
from lightning_adapters.data.squad_format import parse_squad
from lightning_adapters.errors import UserInputError
from lightning_adapters.heads.question_answering import QuestionAnsweringHead
from lightning_adapters.squad_metric import (
    SquadMetric,
    best_spans,
    exact_match_score,
    f1_score,
    normalize_answer,
    squad_scores,
)
from lightning_adapters.tasks.squad import SAMPLE_DIR, SquadDataModule

DATA = DATA_ROOT
DATA = DATA / "squad_v1.1"


# ---- scoring: the official SQuAD v1.1 logic -----------------------------------------------------------------------
@pytest.mark.parametrize("text, normalized", [
    ("The Denver Broncos!", "denver broncos"), ("an apple a day", "apple day"),
    ("  Levi's   Stadium. ", "levis stadium"), ("Theatre", "theatre"), ("A-B", "ab"), ("1,000 ft", "1000 ft"),
    ("THE", ""),
])
def test_normalize_answer(text, normalized):
    assert normalize_answer(text) == normalized


def test_exact_match_and_f1_hand_checked():
    assert exact_match_score("the Denver Broncos", "Denver Broncos.") == 1.0
    assert exact_match_score("Broncos", "Denver Broncos") == 0.0
    assert f1_score("cat sat", "the cat sat on a mat") == pytest.approx(2 * 1 * 0.5 / 1.5)  # P 2/2, R 2/4
    assert f1_score("cat cat", "cat") == pytest.approx(2 * 0.5 * 1 / 1.5)  # bag of tokens: one cat in common
    assert f1_score("dog", "cat") == 0.0 and f1_score("the", "a") == 0.0  # nothing left after normalisation
    # max over gold answers, for EM and F1 independently
    assert squad_scores("Santa Clara", ["Levi's Stadium", "Santa Clara, California"]) == (0.0, pytest.approx(0.8))
    assert squad_scores("levis stadium", ["Levi's Stadium", "Santa Clara"]) == (1.0, 1.0)


def test_f1_properties_on_random_strings():
    rng = random.Random(0)
    for _ in range(200):
        a, b = (" ".join(rng.choices(WORDS[:12], k=rng.randint(1, 6))) for _ in range(2))
        f = f1_score(a, b)
        assert 0 <= f <= 1 and f == pytest.approx(f1_score(b, a))  # symmetric
        assert exact_match_score(a, b) <= f or not normalize_answer(a)  # EM implies F1 = 1


def test_metric_keeps_the_best_feature_per_question_in_any_order():
    rows = [(0, 1.0, 0, 0.2), (0, 3.0, 1, 1.0), (1, float("-inf"), 0, 0.0), (1, -2.0, 0, 0.5), (2, 0.5, 1, 1.0),
            (2, 0.5, 0, 0.0)]  # question 2: a tie, the first feature wins
    expected = {"exact_match": 100 * (1 + 0 + 1) / 3, "f1": 100 * (1.0 + 0.5 + 1.0) / 3}

    def compute(order, chunks):
        metric = SquadMetric()
        for chunk in chunks:
            picked = [rows[i] for i in order[chunk]]
            metric.update(*(torch.tensor([r[k] for r in picked]) for k in range(4)))
        return {k: float(v) for k, v in metric.compute().items()}

    assert compute([0, 1, 2, 3, 4, 5], [slice(0, 6)]) == pytest.approx(expected)
    assert compute([1, 3, 0, 4, 2, 5], [slice(0, 2), slice(2, 6)]) == pytest.approx(expected)
    # DDP's sampler repeats questions to even out ranks: duplicates collapse
    assert compute([0, 1, 2, 3, 4, 5, 1, 0], [slice(0, 8)]) == pytest.approx(expected)


def test_best_spans_equal_brute_force_on_random_logits():
    generator = torch.Generator().manual_seed(0)
    for max_len in (1, 3, 30):
        start, end = torch.randn(6, 17, generator=generator), torch.randn(6, 17, generator=generator)
        mask = torch.rand(6, 17, generator=generator) > 0.3
        mask[5] = False  # a window without context tokens has no answer
        scores, starts, ends = best_spans(start, end, mask, max_len, n_best=5)
        for b in range(6):
            brute = sorted(((start[b, s] + end[b, e]).item(), s, e) for s in range(17) for e in range(17)
                           if mask[b, s] and mask[b, e] and 0 <= e - s < max_len)[::-1][:5]
            got = [(scores[b, k].item(), starts[b, k].item(), ends[b, k].item()) for k in range(5)
                   if scores[b, k] > float("-inf")]
            assert [g[0] for g in got] == pytest.approx([r[0] for r in brute])
            assert {(s, e) for _, s, e in got} == {(s, e) for _, s, e in brute}


# ---- reading and checking -----------------------------------------------------------------------------------------
def squad(context="the bank cut the price", question="what did the bank cut", answers=(("the price", 13),),
          qid="q1", title="t") -> dict:
    qa = {"id": qid, "question": question, "answers": [{"text": t, "answer_start": s} for t, s in answers]}
    return {"data": [{"title": title, "paragraphs": [{"context": context, "qas": [qa]}]}]}


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["data"][0]["paragraphs"][0]["qas"][0]["answers"][0].update(answer_start=4),
     "answer span not found in its context: answer 'the price' at answer_start 4 does not match the context there "
     "(it occurs at character 13)"),
    (lambda d: d["data"][0]["paragraphs"][0]["qas"][0]["answers"][0].update(text="the cost"), "does not occur"),
    (lambda d: d["data"][0]["paragraphs"][0]["qas"][0].pop("question"), "qas[0] has no 'question' field"),
    (lambda d: d["data"][0]["paragraphs"][0].pop("context"), "data[0].paragraphs[0] has no 'context' field"),
    (lambda d: d.pop("data"), "the top level has no 'data' field"),
    (lambda d: d["data"][0]["paragraphs"][0]["qas"][0]["answers"][0].update(answer_start="13"),
     "answer_start must be of type int, got str"),
    (lambda d: d["data"][0]["paragraphs"][0]["qas"][0].update(answers=[]), "has no answers"),
    (lambda d: d["data"][0]["paragraphs"][0].update(context="  "), "context is empty"),
    (lambda d: d["data"][0]["paragraphs"][0]["qas"].append(copy.deepcopy(d["data"][0]["paragraphs"][0]["qas"][0])),
     "repeats id 'q1'"),
    (lambda d: d["data"][0].update(paragraphs=[]), "holds no questions (empty split)"),
])
def test_reader_errors_name_the_place_and_the_fix(edit, message):
    document = squad()
    edit(document)
    with pytest.raises(UserInputError) as info:
        parse_squad(document, "train_file 'x.json'")
    assert message in str(info.value) and str(info.value).startswith("train_file 'x.json'")
    assert "\n" not in str(info.value) and " — " in str(info.value)


def test_malformed_json_and_unanswered_predict_questions(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"data": [\n  {"title": "x",}\n]}')
    with pytest.raises(UserInputError, match=r"train_file '.*bad.json' is not valid JSON \(line 2, column 17"):
        QADataModule(train_file=str(bad))
    with pytest.raises(UserInputError, match="test_file not found"):
        QADataModule(test_file=str(tmp_path / "missing.json"))
    questions = squad()
    questions["data"][0]["paragraphs"][0]["qas"][0].pop("answers")
    (tmp_path / "ask.json").write_text(json.dumps(questions))
    assert QADataModule(predict_file=str(tmp_path / "ask.json")).splits["predict"][0].answers == []


def test_article_split_is_seeded_and_disjoint():
    dm = SquadDataModule(train_file=str(SAMPLE_DIR / "train.json"), validation_fraction=0.25, test_fraction=0.25)
    again = SquadDataModule(train_file=str(SAMPLE_DIR / "train.json"), validation_fraction=0.25, test_fraction=0.25)
    articles = {split: {e.article for e in examples} for split, examples in dm.splits.items()}
    assert [len(articles[s]) for s in ("train", "validation", "test")] == [2, 1, 1]
    assert not (articles["train"] & articles["test"]) and not (articles["train"] & articles["validation"])
    assert sum(len(v) for v in dm.splits.values()) == 20
    ids = {s: [e.id for e in v] for s, v in dm.splits.items()}
    assert ids == {s: [e.id for e in v] for s, v in again.splits.items()}
    kept, held = held_out([e.article for e in dm.splits["train"]], 0.0, np.random.default_rng(0), whole_groups=True)
    assert held == [] and len(kept) == len(dm.splits["train"])
    with pytest.raises(UserInputError, match="would leave an empty split"):
        SquadDataModule(train_file=str(SAMPLE_DIR / "validation.json"))


@pytest.mark.skipif(not DATA.is_dir(), reason="shared SQuAD data not found")
def test_squad_dev_article_split_sizes():
    dm = SquadDataModule(data_dir=str(DATA))
    sizes = {s: (len(v), len({e.article for e in v})) for s, v in dm.splits.items()}
    assert sizes == {"train": (7710, 34), "validation": (633, 4), "test": (2227, 10)}  # as in DATA_CARD.md


# ---- features -----------------------------------------------------------------------------------------------------
def test_windows_hold_the_answer_span_or_point_at_zero(model_dirs, tmp_path):
    context = " ".join(WORDS[6:40]) + " profit rose " + " ".join(WORDS[6:30])  # ~60 tokens
    start = context.index("profit rose")
    (tmp_path / "q.json").write_text(json.dumps(squad(context, "what rose", (("profit rose", start),))))
    dm = QADataModule(tokenizer=model_dirs["bert"], test_file=str(tmp_path / "q.json"), max_length=24, stride=8)
    dm.setup("test")
    windows = dm._datasets["test"][0]
    assert len(windows) > 3
    spans = [(w["start_positions"], w["end_positions"]) for w in windows]
    inside = [w for w in windows if w["start_positions"] > 0]
    assert inside and len(inside) < len(windows)
    for w in inside:
        o = w["offsets"]
        assert context[o[w["start_positions"]][0]:o[w["end_positions"]][1]] == "profit rose"
        assert w["context_mask"][w["start_positions"]] and w["context_mask"][w["end_positions"]]
    assert spans.count((0, 0)) == len(windows) - len(inside)
    assert answer_tokens([(0, 3), (4, 8)], [True, True], 5, 8) == (1, 1)  # answer starting mid-token
    (tmp_path / "long.json").write_text(json.dumps(squad(context, " ".join(WORDS[:10]), (("profit rose", start),))))
    long_question = QADataModule(tokenizer=model_dirs["bert"], test_file=str(tmp_path / "long.json"), max_length=16,
                                 stride=7)
    with pytest.raises(UserInputError, match="question 'q1' has 10 tokens, which leaves no more than stride=7 of "
                                             "max_length=16 tokens for the context — raise max_length"):
        long_question.setup("test")


def test_hub_dataset_in_the_squad_schema(monkeypatch):
    import datasets

    rows = {"id": ["a", "b", "c"], "title": ["T1", "T1", "T2"],
            "context": ["the bank cut", "the bank cut", "net sales"],
            "question": ["who cut", "what was cut", "what"],
            "answers": [{"text": ["the bank"], "answer_start": [0]}, {"text": ["cut"], "answer_start": [9]},
                        {"text": ["sales"], "answer_start": [4]}]}
    loaded = datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows),
                                   "validation": datasets.Dataset.from_dict({k: v[2:] for k, v in rows.items()})})
    monkeypatch.setattr(datasets, "load_dataset", lambda name, config=None: loaded)
    dm = SquadDataModule(hub_dataset="rajpurkar/squad", validation_fraction=0.5)
    assert [e.id for e in dm.splits["test"]] == ["c"]  # the hub's dev split is the test split
    assert sorted(len(dm.splits[s]) for s in ("train", "validation")) == [1, 2]  # T1 / T2 articles, carved
    rows["answers"][1] = {"text": ["cut"], "answer_start": [3]}
    loaded["train"] = datasets.Dataset.from_dict(rows)
    with pytest.raises(UserInputError, match=r"hub dataset 'x' split 'train': .*answer span not found"):
        QADataModule(hub_dataset="x")


# ---- the head on every family and strategy ------------------------------------------------------------------------
STRATEGIES = pick("bottleneck", "lora", "ia3", "prompt", "prefix")
CASES = [("bert", "bottleneck"), ("bert", "prompt"), ("roberta", "prefix"), ("distilbert", "lora"), ("gpt2", "prompt"),
         ("gpt2", "prefix"), ("llama", "lora"), ("llama", "prompt"), ("t5", "prompt"), ("t5", "prefix"),
         ("t5", "ia3")]


def sample_batches(tokenizer: str, split: str = "test", max_length: int = 40) -> tuple[QADataModule, dict]:
    dm = SquadDataModule(tokenizer=tokenizer, max_length=max_length, stride=12, batch_size=8, eval_batch_size=4)
    dm.setup("fit")
    return dm, next(iter(getattr(dm, f"{split}_dataloader")()))


def perturb(module: AdapterModule, seed: int = 0) -> None:
    """Trained-looking weights: zero-initialised adapter parts (LoRA B, bottleneck up) would hide bugs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn(param.shape, generator=generator))


@pytest.mark.parametrize("family, strategy", CASES, ids=[f"{f}-{s}" for f, s in CASES])
def test_head_trains_scores_and_predicts_with_every_strategy(family, strategy, model_dirs):
    dm, batch = sample_batches(model_dirs[family])
    module = AdapterModule(model_dirs[family], strategy=STRATEGIES[strategy](), head=QuestionAnsweringHead(n_best=3))
    perturb(module)
    start, end = module(batch)
    assert start.shape == end.shape == batch["input_ids"].shape  # prompt/prefix positions trimmed away
    loss = module.head.loss((start, end), batch)
    loss.backward()
    trainable = [p for p in module.parameters() if p.requires_grad]
    assert torch.isfinite(loss) and all(p.grad is not None for p in trainable)
    assert any(p.grad.abs().sum() > 0 for n, p in module.named_parameters() if p.requires_grad and "head." not in n)
    module.eval()
    with torch.no_grad():
        outputs = module(batch)
        module.head.update_metrics(module.test_metrics, outputs, batch, module.backbone, "test")
        rows = module.head.predict(module.backbone, batch)
    scores = {k: float(v) for k, v in module.test_metrics.compute().items()}
    # the metric path (per-feature tensors, best feature per question) and the predict path agree
    gold = {e.id: e.answers for e in dm.splits["test"]}
    assert [r["id"] for r in rows] == list(dict.fromkeys(batch["id"]))
    assert all(r["gold_answers"] == gold[r["id"]] for r in rows)  # a labelled split: gold beside the prediction
    assert scores["test_exact_match"] == pytest.approx(
        100 * sum(squad_scores(r["answer"], gold[r["id"]])[0] for r in rows) / len(rows))
    assert scores["test_f1"] == pytest.approx(100 * sum(squad_scores(r["answer"], gold[r["id"]])[1] for r in rows)
                                              / len(rows), abs=1e-4)
    contexts = {e.id: e.context for e in dm.splits["test"]}
    for row in rows:
        assert 1 <= len(row["n_best"]) <= 3 and row["answer"] == row["n_best"][0]["text"]
        assert [c["score"] for c in row["n_best"]] == sorted((c["score"] for c in row["n_best"]), reverse=True)
        for candidate in row["n_best"]:
            assert contexts[row["id"]][candidate["start"]:candidate["end"]].strip() == candidate["text"]


@pytest.mark.parametrize("family, strategy", [("bert", "lora"), ("gpt2", "prompt"), ("t5", "prefix")])
def test_adapter_round_trip_reproduces_outputs(family, strategy, model_dirs, tmp_path):
    _, batch = sample_batches(model_dirs[family])
    module = AdapterModule(model_dirs[family], strategy=STRATEGIES[strategy](),
                           head=QuestionAnsweringHead(max_answer_length=7, n_best=2)).eval()
    perturb(module, seed=1)
    module.save_adapter(tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["head"]["init_args"] == {"max_answer_length": 7, "n_best": 2, "dropout": 0.0}
    loaded = load_adapter(tmp_path / "adapter").eval()
    with torch.no_grad():
        for a, b in zip(module(batch), loaded(batch), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert module.head.predict(module.backbone, batch) == loaded.head.predict(loaded.backbone, batch)


def test_label_names_are_refused(model_dirs):
    with pytest.raises(UserInputError, match="has no label set"):
        AdapterModule(model_dirs["bert"], head=QuestionAnsweringHead(), label_names=["a", "b"])
    assert SquadDataModule().label_names is None


# ---- the command line ---------------------------------------------------------------------------------------------
def qa_config(tmp_path: Path, model_dir: str, **data_args) -> Path:
    config = {
        "seed_everything": 3, "export_dir": str(tmp_path / "adapter"),
        "trainer": {"max_epochs": 2, "accelerator": "cpu", "devices": 1, "log_every_n_steps": 1,
                    "enable_progress_bar": False, "enable_model_summary": False,
                    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                               "init_args": {"save_dir": str(tmp_path / "runs"), "name": "qa"}},
                    "callbacks": [
                        # the head's own metric (TaskHead.monitor): Lightning raises if validation never logs it
                        {"class_path": "lightning_adapters.BestCheckpoint",
                         "init_args": {"dirpath": str(tmp_path / "ckpt")}},
                        {"class_path": "lightning_adapters.JsonlPredictionWriter",
                         "init_args": {"output": str(tmp_path / "predictions.jsonl")}}]},
        "model": {"class_path": "lightning_adapters.AdapterModule",
                  "init_args": {"backbone": model_dir, "learning_rate": 0.01,
                                "strategy": {"class_path": "lightning_adapters.Bottleneck"},
                                "head": {"class_path": "lightning_adapters.heads.question_answering."
                                                       "QuestionAnsweringHead", "init_args": {"n_best": 2}}}},
        "data": {"class_path": "lightning_adapters.tasks.squad.SquadDataModule",
                 "init_args": {"max_length": 48, "stride": 16, "batch_size": 8, **data_args}},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_cli_fit_test_predict(model_dirs, tmp_path, capsys):
    config = qa_config(tmp_path, model_dirs["bert"])
    main(["fit", "--config", str(config), "--test_after_fit", "true"])
    out = capsys.readouterr().out
    assert "test_exact_match" in out and "test_f1" in out and "adapter saved to" in out
    main(["predict", "--config", str(config), "--model.init_args.adapter", str(tmp_path / "adapter")])
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    test = json.loads((SAMPLE_DIR / "test.json").read_text())["data"][0]["paragraphs"][0]
    assert [r["id"] for r in rows] == [q["id"] for q in test["qas"]]
    for row in rows:
        assert row["answer"] and row["answer"] in test["context"] and isinstance(row["score"], float)
        assert len(row["n_best"]) == 2


def test_cli_bad_answer_span_exits_2_and_writes_nothing(model_dirs, tmp_path, capsys):
    bad = squad()
    bad["data"][0]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] = 2
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    config = qa_config(tmp_path, model_dirs["bert"], train_file=str(tmp_path / "bad.json"))
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "answer span not found in its context" in err[0] and "bad.json" in err[0]
    assert sorted(tmp_path.rglob("*")) == before
