"""Domain adapters from raw text (issue 14, part 3): `LanguageModelingHead` (masked LM for encoders, causal LM for
decoders) and `TextCorpusDataModule`, checked against transformers' own LM heads, then carried under a task adapter
(``adapters`` + ``init_from``) and trained through the CLI."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import build_tokenizer, sample_batch
from transformers import AutoModelForCausalLM, BertForMaskedLM

from lightning_adapters import (
    AdapterModule,
    LanguageModelingHead,
    Lora,
    Predictor,
    TextCorpusDataModule,
    UserInputError,
    load_adapter,
    save_adapter,
)
from lightning_adapters.cli import run_cli

CORPUS = ["the company profit rose in the quarter", "net sales fell and shares dropped", "the bank expects a cut",
          "strong results for the year", "the market price was up", "a deal for the company"]


def lm_module(model_dir: str, **head) -> AdapterModule:
    return AdapterModule(model_dir, strategy=Lora(r=4), head=LanguageModelingHead(**head))


def perturb(module: AdapterModule, seed: int = 0) -> None:
    """Non-trivial adapter and head weights (LoRA starts as the identity)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in module.trainable_parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))


def test_causal_loss_equals_the_models_own_causal_lm(model_dirs):
    module = lm_module(model_dirs["gpt2"]).eval()
    batch = sample_batch(build_tokenizer(), CORPUS[:3])  # right-padded, rows of different lengths
    reference = AutoModelForCausalLM.from_pretrained(model_dirs["gpt2"]).eval()
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    with torch.no_grad():
        ours = module.head.loss(module(batch), batch)
        theirs = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).loss
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    assert list(module.head.parameters()) == []  # causal LM trains the adapter only

    left_tokenizer = build_tokenizer()
    left_tokenizer.padding_side = "left"
    left = sample_batch(left_tokenizer, CORPUS[:3])
    with torch.no_grad():  # a row's score does not depend on the side it is padded on (positions follow the text)
        right_rows, left_rows = module.head.predict(module.backbone, batch), module.head.predict(module.backbone, left)
    for on_right, on_left in zip(right_rows, left_rows, strict=True):
        assert on_right["tokens"] == on_left["tokens"] and on_right["nll"] == pytest.approx(on_left["nll"], abs=1e-5)
    one_token = {"input_ids": torch.tensor([[7]]), "attention_mask": torch.tensor([[1]])}
    assert module.head.loss(module.head(module.backbone, one_token), one_token) == 0  # no term, not NaN


def test_masked_loss_equals_bert_for_masked_lm_with_the_heads_weights(model_dirs):
    module = lm_module(model_dirs["bert"])
    perturb(module)
    module.eval()
    batch = sample_batch(build_tokenizer(), CORPUS[:4])
    corrupted, labels = module.head.eval_mask(batch["input_ids"], batch["attention_mask"])
    reference = BertForMaskedLM.from_pretrained(model_dirs["bert"]).eval()
    module.set_active_adapters("default")
    with torch.no_grad():  # BERT's MLM head, given our transform and bias; the base given our adapted backbone
        reference.bert.load_state_dict({k: v for k, v in module.backbone.state_dict().items()
                                        if not k.startswith("pooler")}, strict=False)
        transform = reference.cls.predictions.transform
        transform.dense.load_state_dict(module.head.transform[0].state_dict())
        transform.LayerNorm.load_state_dict(module.head.transform[2].state_dict())
        reference.cls.predictions.bias.copy_(module.head.bias)
        hidden = module.backbone(input_ids=corrupted, attention_mask=batch["attention_mask"]).last_hidden_state
        theirs = F.cross_entropy(reference.cls(hidden).flatten(0, 1), labels.flatten(), ignore_index=-100)
        ours = module.head.loss(module(batch), batch)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_masking_follows_berts_recipe_and_never_touches_special_or_padding_tokens(model_dirs):
    head = lm_module(model_dirs["bert"]).head
    tokenizer = build_tokenizer()
    batch = sample_batch(tokenizer, CORPUS * 200)
    torch.manual_seed(0)
    corrupted, labels = head.mask(batch["input_ids"], batch["attention_mask"])
    chosen = labels != -100
    special = torch.isin(batch["input_ids"], torch.tensor(tokenizer.all_special_ids)) | (batch["attention_mask"] == 0)
    assert not chosen[special].any() and torch.equal(labels[chosen], batch["input_ids"][chosen])
    assert torch.equal(corrupted[~chosen], batch["input_ids"][~chosen])
    assert chosen.any(dim=1).all()  # at least one per row
    share = chosen.sum() / (~special).sum()
    masked = (corrupted[chosen] == tokenizer.mask_token_id).float().mean()
    kept = (corrupted[chosen] == batch["input_ids"][chosen]).float().mean()
    # 15 % chosen, and one where a row drew none: n p + (1 - p)^n per row of n tokens; 80 % of them masked, ~10 % kept
    lengths = (~special).sum(dim=1).double()
    expected = (lengths * 0.15 + 0.85 ** lengths).sum() / lengths.sum()
    assert abs(share - expected) < 0.01 and 0.77 < masked < 0.83 and 0.08 < kept < 0.14


def test_evaluation_masks_depend_on_the_text_only(model_dirs):
    head = lm_module(model_dirs["bert"]).head
    tokenizer = build_tokenizer()
    alone = sample_batch(tokenizer, [CORPUS[0]])
    tokenizer_left = build_tokenizer()
    tokenizer_left.padding_side = "left"
    among = sample_batch(tokenizer_left, [CORPUS[1], CORPUS[0]])  # wider batch, padded on the other side
    first, first_labels = head.eval_mask(alone["input_ids"], alone["attention_mask"])
    second, second_labels = head.eval_mask(among["input_ids"], among["attention_mask"])
    keep = among["attention_mask"][1].bool()
    assert torch.equal(second[1][keep], first[0]) and torch.equal(second_labels[1][keep], first_labels[0])
    assert (first_labels != -100).any()
    again = head.eval_mask(alone["input_ids"], alone["attention_mask"])
    assert torch.equal(again[0], first) and torch.equal(again[1], first_labels)


@pytest.mark.parametrize("family, head, message", [
    ("t5", {}, "t5 is an encoder-decoder, which pretrains by span corruption"),
    ("bert", {"objective": "causal"}, "objective causal on bert, an encoder, would see the token it predicts"),
    ("gpt2", {"objective": "masked"}, "objective masked needs bidirectional attention; gpt2 is a decoder"),
    ("llama", {}, r"llama has an output layer of its own \(tie_word_embeddings: false\)"),
])
def test_a_model_the_objective_cannot_train_is_refused_in_one_line(model_dirs, family, head, message):
    with pytest.raises(UserInputError, match=message) as err:
        lm_module(model_dirs[family], **head)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("options, message", [({"mask_probability": 0.0}, r"mask_probability must be in \(0, 1\)"),
                                              ({"objective": "span"}, "unknown objective 'span'")])
def test_bad_head_options_are_refused(options, message):
    with pytest.raises(UserInputError, match=message):
        LanguageModelingHead(**options)


def write_lines(path, lines) -> str:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_corpus_reads_text_files_tables_and_lines(tmp_path, model_dirs):
    txt = write_lines(tmp_path / "corpus.txt", ["the company profit rose", "", "ok", "net sales fell"])
    data = TextCorpusDataModule(model_dirs["bert"], train_file=txt, validation_file=txt, min_words=2)
    assert data.splits["train"] == (["the company profit rose", "net sales fell"], [0, 2])
    calls = tmp_path / "calls.jsonl"
    calls.write_text("".join(json.dumps({"id": name, "transcript": text}) + "\n" for name, text in
                             [("A_q1", "profit rose.\nThank you.\nnet sales fell in the quarter."), ("B_q2", "cut")]))
    data = TextCorpusDataModule(model_dirs["bert"], train_file=str(calls), text_column="transcript", lines=True,
                                min_words=2, validation_fraction=0.0)
    assert data.splits["train"] == (["profit rose.", "Thank you.", "net sales fell in the quarter."],
                                     [["A_q1", 1], ["A_q1", 2], ["A_q1", 3]])  # the call, the line in it
    many = write_lines(tmp_path / "many.txt", [f"{w} profit rose" for w in CORPUS[0].split()] * 5)
    data = TextCorpusDataModule(model_dirs["bert"], train_file=many, validation_fraction=0.2, max_train_texts=10)
    again = TextCorpusDataModule(model_dirs["bert"], train_file=many, validation_fraction=0.2, max_train_texts=10)
    assert len(data.splits["train"][0]) == 10 and len(data.splits["validation"][0]) == 7
    assert data.splits == again.splits  # seeded
    assert not set(data.splits["train"][1]) & set(data.splits["validation"][1])
    fewer = TextCorpusDataModule(model_dirs["bert"], train_file=many, validation_fraction=0.2, max_validation_texts=3)
    assert len(fewer.splits["validation"][0]) == 3 and set(fewer.splits["validation"][1]) <= set(
        TextCorpusDataModule(model_dirs["bert"], train_file=many, validation_fraction=0.2).splits["validation"][1])


def test_finance_text_pack_reads_transcript_sentences():
    from lightning_adapters.tasks.finance_text import FinanceTextDataModule

    data = FinanceTextDataModule()  # the bundled sample: 3 + 1 calls of 12 and 6 lines, 4 of them under 5 words
    assert len(data.splits["train"][0]) == 33 and len(data.splits["validation"][0]) == 5
    assert "Thank you." not in data.splits["train"][0] + data.splits["validation"][0]
    assert all(isinstance(row_id, list) and len(row_id) == 2 for row_id in data.splits["train"][1])


def test_validation_is_carved_by_whole_rows_when_texts_are_lines(tmp_path, model_dirs):
    calls = tmp_path / "calls.jsonl"
    calls.write_text("".join(json.dumps({"id": f"call{n}", "text": "\n".join(f"line {i} of call {n} here"
                                                                            for i in range(5))}) + "\n"
                             for n in range(10)))
    data = TextCorpusDataModule(model_dirs["bert"], train_file=str(calls), lines=True, validation_fraction=0.2)
    held, kept = ({row_id[0] for row_id in data.splits[split][1]} for split in ("validation", "train"))
    assert len(held) == 2 and len(kept) == 8 and not held & kept  # 2 whole calls, 10 sentences
    assert len(data.splits["validation"][0]) == 10


@pytest.mark.parametrize("case, message", [
    ("no_text", "holds no text of at least 3 words in column 'text' — check text_column and min_words"),
    ("column", "has no column 'body'"),
    ("nothing", "no text given — pass train_file"),
    ("empty", "is empty"),
    ("zero", r"max_train_texts=0 is out of range"),
    ("size_only", "select_size needs select_near"),
])
def test_bad_corpus_input_is_refused_in_one_line(tmp_path, model_dirs, case, message):
    options = {"train_file": write_lines(tmp_path / "c.txt", ["a b", "c"]), "min_words": 3}
    if case == "column":
        (tmp_path / "c.csv").write_text("text\nthe profit rose\n")
        options = {"train_file": str(tmp_path / "c.csv"), "text_column": "body"}
    elif case == "nothing":
        options = {}
    elif case in ("zero", "size_only"):
        options = {"train_file": options["train_file"],
                   **({"max_train_texts": 0} if case == "zero" else {"select_size": 3})}
    elif case == "empty":
        (tmp_path / "e.txt").write_text("\n\n")
        options = {"train_file": str(tmp_path / "e.txt")}
    with pytest.raises(UserInputError, match=message) as err:
        TextCorpusDataModule(model_dirs["bert"], **options)
    assert "\n" not in str(err.value)


def test_domain_adapter_trains_then_starts_a_task_adapter(tmp_path, model_dirs):
    corpus = write_lines(tmp_path / "corpus.txt", CORPUS * 8)
    data = TextCorpusDataModule(model_dirs["bert"], train_file=corpus, validation_file=corpus, batch_size=8)
    L.seed_everything(0)
    module = AdapterModule(model_dirs["bert"], strategy=Lora(r=4), head=LanguageModelingHead(), learning_rate=3e-2)
    trainer = L.Trainer(max_epochs=10, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0)
    before = trainer.validate(module, data, verbose=False)[0]["val_perplexity"]
    trainer.fit(module, data)
    after = trainer.validate(module, data, verbose=False)[0]["val_perplexity"]
    assert after < 0.7 * before  # the memorised corpus: the same evaluation masks, much lower perplexity

    save_adapter(module, tmp_path / "domain")
    reloaded = load_adapter(tmp_path / "domain")
    rows = Predictor.from_module(module).predict(CORPUS[:2])
    assert rows == Predictor.from_adapter(tmp_path / "domain").predict(CORPUS[:2])
    assert [row["text"] for row in rows] == CORPUS[:2] and all(row["nll"] > 0 and row["tokens"] for row in rows)

    task = AdapterModule(model_dirs["bert"], strategy=Lora(r=4), label_names=["neg", "pos"],
                         adapters={"finance": str(tmp_path / "domain")}, init_from="finance")
    domain = dict(reloaded.named_parameters())
    own = {name: p for name, p in task.named_parameters() if "lora_" in name and "base_layer" not in name}
    assert own and all(torch.equal(p, domain[name]) for name, p in own.items())
    assert task.head_of("finance").masked and task.trained_adapters == ["default"]


def test_fit_trains_a_domain_adapter_from_the_command_line(tmp_path, monkeypatch, model_dirs):
    monkeypatch.chdir(tmp_path)
    corpus = write_lines(tmp_path / "corpus.txt", CORPUS * 4)
    config = {"seed_everything": 3,
              "model": {"backbone": model_dirs["gpt2"], "strategy": {"class_path": "lightning_adapters.Lora"},
                        "head": {"class_path": "lightning_adapters.LanguageModelingHead"}},
              "data": {"class_path": "lightning_adapters.TextCorpusDataModule",
                       "init_args": {"train_file": corpus, "batch_size": 4, "validation_fraction": 0.25}},
              "trainer": {"max_epochs": 1, "accelerator": "cpu", "enable_progress_bar": False,
                          "default_root_dir": str(tmp_path / "runs")}}
    (tmp_path / "domain.yaml").write_text(yaml.safe_dump(config))
    run_cli(["fit", "--config", str(tmp_path / "domain.yaml")])
    exported = [path.parent for path in (tmp_path / "runs").rglob("adapter_config.json")]
    assert len(exported) == 1, "fit exports the best adapter"
    module = load_adapter(exported[0])
    assert isinstance(module.head, LanguageModelingHead) and not module.head.masked


FINANCE = ["quarterly revenue rose 8 percent on higher prices", "operating margin improved to 11 percent",
           "the bank raised its full-year profit forecast", "net income fell as costs climbed"]
OTHER = ["my card has not arrived yet", "how do I reset my pin", "what time does the train leave",
         "can I change the delivery address", "the cat slept on the sofa all afternoon", "I lost my phone"]


def test_select_near_keeps_the_training_texts_nearest_the_task(tmp_path):
    pool = write_lines(tmp_path / "pool.txt", OTHER + FINANCE)
    task = write_lines(tmp_path / "task.txt", ["profit for the quarter beat expectations",
                                               "sales grew and margins widened"])
    data = TextCorpusDataModule("minilm", train_file=pool, select_near=task, select_size=4, validation_fraction=0.0)
    assert sorted(data.splits["train"][0]) == sorted(FINANCE)  # the frozen MiniLM tells finance from the rest
    with pytest.raises(UserInputError, match="select_near needs select_size"):
        TextCorpusDataModule("minilm", train_file=pool, select_near=task)
    with pytest.raises(UserInputError, match="select_near not found"):
        TextCorpusDataModule("minilm", train_file=pool, select_near=str(tmp_path / "missing.txt"), select_size=2)
