"""Dialogue data: exact assistant-only masks (hand-built and HF references), prompts, truncation, bad input, the
customer-support pack, and fit/validate/predict with the generation head on a tiny Llama for every strategy."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from conftest import DATA_ROOT
from strategy_table import pick

from lightning_adapters import AdapterModule, JsonlPredictionWriter, Lora
from lightning_adapters.cli import main
from lightning_adapters.data.dialogue import FALLBACK_TEMPLATE, DialogueDataModule
from lightning_adapters.errors import UserInputError
from lightning_adapters.heads.generation import GenerationHead
from lightning_adapters.tasks.customer_support_replies import SAMPLE_DIR, CustomerSupportRepliesDataModule

REPO = Path(__file__).resolve().parents[1]
SYS, U1, A1, U2, A2 = "the bank", "card pin", "the pin is good", "refund cash", "refund in a year"
DIALOGUE = [{"role": "system", "content": SYS}, {"role": "user", "content": U1}, {"role": "assistant", "content": A1},
            {"role": "user", "content": U2}, {"role": "assistant", "content": A2}]
SHORT = [{"role": "user", "content": "money transfer"}, {"role": "assistant", "content": "transfer is up"}]


def write_jsonl(path: Path, rows: list) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def dialogues(tmp_path: Path, rows: list[list[dict]], name: str = "d.jsonl", **extra) -> str:
    return write_jsonl(tmp_path / name, [{"messages": m, "intent": f"i{k}", **extra} for k, m in enumerate(rows)])


def module(tmp_path, model_dirs, rows=(DIALOGUE, SHORT), **kwargs) -> DialogueDataModule:
    path = dialogues(tmp_path, list(rows))
    kwargs = {"train_file": path, "validation_file": path, "test_file": path, "meta_columns": ["intent"]} | kwargs
    return DialogueDataModule(model_dirs["llama"], **kwargs)


def ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


# ---- masking -------------------------------------------------------------------------------------------------
def test_fallback_masks_exactly_the_assistant_turns_hand_built(tmp_path, model_dirs):
    data = module(tmp_path, model_dirs)
    tok, item = data.tokenizer, data._datasets["validation"][0]
    # The documented fallback, written out by hand: <|role|> line, content, EOS, newline.
    before1 = f"<|system|>\n{SYS}</s>\n<|user|>\n{U1}</s>\n<|assistant|>\n"
    before2 = f"\n<|user|>\n{U2}</s>\n<|assistant|>\n"
    parts = [(before1, False), (A1 + "</s>", True), (before2, False), (A2 + "</s>", True), ("\n", False)]
    expected_ids = [i for text, _ in parts for i in ids(tok, text)]
    expected_labels = [i if trained else -100 for text, trained in parts for i in ids(tok, text)]
    assert item["input_ids"] == expected_ids
    assert item["labels"] == expected_labels
    assert item["prompt_ids"] == ids(tok, before1 + A1 + "</s>" + before2)
    assert (item["references"], item["source"], item["meta"]) == (A2, U2, {"id": 0, "intent": "i0"})
    trained = [label for label in expected_labels if label != -100]
    assert tok.convert_ids_to_tokens(trained[-1]) == "</s>"  # the end-of-turn token is trained


def test_masks_equal_hf_assistant_masks_of_a_generation_template(tmp_path, model_dirs):
    """Hugging Face's own assistant mask ({% generation %} blocks) is the reference for a custom template."""
    template = ("{% for m in messages %}{{ '<|' + m['role'] + '|>\n' }}{% if m['role'] == 'assistant' %}"
                "{% generation %}{{ m['content'] + eos_token }}{% endgeneration %}{% else %}"
                "{{ m['content'] + eos_token }}{% endif %}{{ '\n' }}{% endfor %}"
                "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}")
    data = module(tmp_path, model_dirs, chat_template=template)
    for item, row in zip(data._datasets["validation"], (DIALOGUE, SHORT), strict=True):
        reference = data.tokenizer.apply_chat_template(row, chat_template=template, return_dict=True,
                                                       return_assistant_tokens_mask=True)
        assert item["input_ids"] == reference["input_ids"]
        assert [int(label != -100) for label in item["labels"]] == reference["assistant_masks"]


@pytest.mark.slow
def test_smollm2_masks_and_prompts_match_its_chat_template():
    from lightning_adapters.backbone import load_tokenizer

    tok = load_tokenizer("smollm2")
    assert tok.chat_template  # the GGUF file carries SmolLM2's ChatML template
    data = DialogueDataModule.__new__(DialogueDataModule)  # only the encoder: no files needed
    data.tokenizer, data.template, data.max_length, data.truncation = tok, tok.chat_template, 512, "none"
    from lightning_adapters.data.dialogue import Dialogue

    item = data._encode(Dialogue(DIALOGUE, "row 1"), "test")
    assert item["input_ids"] == tok.apply_chat_template(DIALOGUE, tokenize=True)["input_ids"]
    assert item["prompt_ids"] == tok.apply_chat_template(DIALOGUE[:-1], tokenize=True,
                                                         add_generation_prompt=True)["input_ids"]
    head1 = f"<|im_start|>system\n{SYS}<|im_end|>\n<|im_start|>user\n{U1}<|im_end|>\n<|im_start|>assistant\n"
    head2 = f"\n<|im_start|>user\n{U2}<|im_end|>\n<|im_start|>assistant\n"
    parts = [(head1, False), (A1 + "<|im_end|>", True), (head2, False), (A2 + "<|im_end|>", True), ("\n", False)]
    assert item["labels"] == [i if trained else -100 for text, trained in parts for i in ids(tok, text)]


# ---- batches -------------------------------------------------------------------------------------------------
def test_batches_follow_the_generation_head_contract(tmp_path, model_dirs):
    data = module(tmp_path, model_dirs, eval_batch_size=2)
    items, pad = data._datasets["validation"], data.tokenizer.pad_token_id
    batch = next(iter(data.val_dataloader()))
    for row, item in enumerate(items):
        n, p = len(item["input_ids"]), len(item["prompt_ids"])
        assert batch["input_ids"][row, :n].tolist() == item["input_ids"]
        assert set(batch["input_ids"][row, n:].tolist()) <= {pad} and batch["attention_mask"][row].sum() == n
        assert set(batch["labels"][row, n:].tolist()) <= {-100}  # right padding: never a label
        assert batch["prompt_input_ids"][row, -p:].tolist() == item["prompt_ids"]  # left padding
        assert batch["prompt_attention_mask"][row].tolist() == [0] * (batch["prompt_input_ids"].shape[1] - p) + [1] * p
    assert batch["references"] == [A2, SHORT[-1]["content"]] and batch["sources"] == [U2, SHORT[0]["content"]]
    assert batch["meta"] == [{"id": 0, "intent": "i0"}, {"id": 1, "intent": "i1"}]  # row ids: no id column
    assert set(next(iter(data.train_dataloader()))) == {"input_ids", "attention_mask", "labels"}


def test_single_exchange_rows_and_role_aliases_equal_the_messages_form(tmp_path, model_dirs):
    csv_path = tmp_path / "pairs.csv"
    csv_path.write_text(f"instruction,response,intent\n{U1},{A1},x\n")
    pairs = DialogueDataModule(model_dirs["llama"], train_file=str(csv_path), system_prompt=SYS, test_fraction=0,
                               validation_fraction=0)
    renamed = [{"role": "boss", "content": SYS}, {"role": "human", "content": U1}, {"role": "gpt", "content": A1}]
    aliases = {"boss": "system", "human": "user", "gpt": "assistant"}
    chat = DialogueDataModule(model_dirs["llama"], train_file=dialogues(tmp_path, [renamed]), test_fraction=0,
                              validation_fraction=0, role_aliases=aliases)
    assert pairs._datasets["train"][0] == chat._datasets["train"][0]


def test_messages_as_json_text_in_csv_and_as_parquet_lists_equal_jsonl(tmp_path, model_dirs):
    import pandas as pd

    expected = module(tmp_path, model_dirs)._datasets["validation"]
    frame = pd.DataFrame({"messages": [DIALOGUE, SHORT], "intent": ["i0", "i1"]})
    frame.to_parquet(tmp_path / "d.parquet")
    frame.assign(messages=frame["messages"].map(json.dumps)).to_csv(tmp_path / "d.csv", index=False)
    for name in ("d.parquet", "d.csv"):
        path = str(tmp_path / name)
        data = DialogueDataModule(model_dirs["llama"], train_file=path, validation_file=path, test_file=path,
                                  meta_columns=["intent"])
        assert data._datasets["validation"] == expected


def test_predict_rows_may_end_with_a_user_turn(tmp_path, model_dirs):
    data = module(tmp_path, model_dirs, predict_file=dialogues(tmp_path, [DIALOGUE[:4]], "p.jsonl"))
    item, full = data._datasets["predict"][0], data._datasets["validation"][0]
    assert item["prompt_ids"] == full["prompt_ids"] == item["input_ids"]  # the open generation header included
    assert item["references"] is None and set(item["labels"][len(full["prompt_ids"]):]) <= {-100}
    assert next(iter(data.predict_dataloader()))["references"] is None


# ---- truncation ----------------------------------------------------------------------------------------------
def test_truncation_drops_oldest_turns_then_cuts_tokens(tmp_path, model_dirs):
    shorter = [DIALOGUE[0], *DIALOGUE[3:]]  # the system turn and the final exchange
    kept = module(tmp_path, model_dirs, rows=[shorter])._datasets["validation"][0]
    data = module(tmp_path, model_dirs, rows=[DIALOGUE], max_length=len(kept["input_ids"]))
    assert data._datasets["validation"][0] == kept | {"meta": {"id": 0, "intent": "i0"}}
    full = module(tmp_path, model_dirs, rows=[DIALOGUE])._datasets["validation"][0]
    cut = module(tmp_path, model_dirs, rows=[DIALOGUE], truncation="tokens", max_length=30)._datasets["validation"][0]
    assert cut["input_ids"] == full["input_ids"][:30] and cut["labels"] == full["labels"][:30]
    assert cut["prompt_ids"] == full["prompt_ids"][-30:]  # prompts keep their end, where generation starts


def test_over_long_dialogue_without_truncation_names_the_row(tmp_path, model_dirs):
    with pytest.raises(UserInputError, match=r"d\.jsonl' line 2: the dialogue is \d+ tokens, longer than "
                                             r"max_length=20 with truncation 'none'"):
        module(tmp_path, model_dirs, rows=[SHORT, DIALOGUE], max_length=20, truncation="none")
    with pytest.raises(UserInputError, match="no assistant token is left within max_length=4"):
        module(tmp_path, model_dirs, rows=[SHORT], max_length=4, truncation="tokens")


# ---- bad input -----------------------------------------------------------------------------------------------
NON_INCREMENTAL = "{{ messages | length }}" + FALLBACK_TEMPLATE
REJECTING = "{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}" + \
    FALLBACK_TEMPLATE


@pytest.mark.parametrize("rows, options, message", [
    ([[]], {}, "line 1: empty dialogue"),
    ([SHORT, [{"role": "bot", "content": "hi"}, *SHORT]], {}, "line 2 turn 1: role 'bot' is not known"),
    ([[SHORT[0], {"role": "assistant", "content": " "}]], {}, "turn 2: empty assistant content"),
    ([SHORT[:1]], {}, "ends with a user turn"),
    ([SHORT[::-1]], {}, "no user turn before the first assistant turn"),
    ([[{"role": "user"}]], {}, "turn 1: expected an object with string 'role' and 'content'"),
    ([SHORT], {"chat_template": "tokenizer"}, "has no chat template"),
    ([SHORT], {"chat_template": NON_INCREMENTAL}, "does not render this dialogue turn by turn"),
    ([DIALOGUE], {"chat_template": REJECTING}, "the chat template rejects this dialogue (no system role)"),
    ([SHORT], {"meta_columns": ["category"]}, "has no column 'category'"),
    ([SHORT], {"truncation": "middle"}, "truncation='middle' is unknown"),
    ([SHORT], {"role_aliases": {"human": "person"}}, "map onto unknown roles"),
    ([SHORT], {"max_length": 1}, "max_length=1 is out of range"),
])
def test_bad_dialogues_give_one_line_errors(tmp_path, model_dirs, rows, options, message):
    with pytest.raises(UserInputError) as error:
        module(tmp_path, model_dirs, rows=rows, **options)
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("text, message", [
    ("question,answer\nhi,ho\n", "has neither a 'messages' nor an 'instruction' column"),
    ("instruction,intent\ncard pin,x\n", "has no column 'response'"),
    ("instruction,response\n", "is empty (no data rows)"),
    ('messages\n"[{""role"": ""user""}"\n', "messages is not a JSON list"),
])
def test_bad_files_give_one_line_errors(tmp_path, model_dirs, text, message):
    (tmp_path / "t.csv").write_text(text)
    with pytest.raises(UserInputError, match="t.csv") as error:
        DialogueDataModule(model_dirs["llama"], train_file=str(tmp_path / "t.csv"), test_fraction=0,
                           validation_fraction=0)
    assert message in str(error.value)
    with pytest.raises(UserInputError, match="no dialogue data"):
        DialogueDataModule(model_dirs["llama"])


def test_cli_bad_dialogue_exits_2_with_one_line_and_writes_nothing(tmp_path, model_dirs, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = dialogues(tmp_path, [[{"role": "customer", "content": "card pin"}, SHORT[1]]], "bad.jsonl")
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(REPO / "configs/customer_support_replies/lora.yaml"), "--model.init_args.backbone",
              model_dirs["llama"], "--data", "lightning_adapters.data.dialogue.DialogueDataModule",
              "--data.init_args.train_file", bad])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1
    assert "bad.jsonl' line 1 turn 1: role 'customer' is not known" in err
    assert sorted(tmp_path.rglob("*")) == before


# ---- the customer-support pack -------------------------------------------------------------------------------
BITEXT_COLUMNS = ["context", "role", "instruction", "intent", "entity_type", "entity_value", "start_offset",
                  "end_offset", "category", "tags", "response"]


def test_pack_sample_has_bitext_columns_and_disjoint_splits(model_dirs):
    data = CustomerSupportRepliesDataModule(tokenizer=model_dirs["llama"])
    assert {split: len(rows) for split, rows in data.splits.items()} == {"train": 32, "validation": 8, "test": 8}
    requests = {}
    for split in ("train", "validation", "test"):
        with open(SAMPLE_DIR / f"{split}.csv", newline="", encoding="utf-8") as file:
            rows = list(csv.DictReader(file))
        assert list(rows[0]) == BITEXT_COLUMNS
        requests[split] = {row["instruction"] for row in rows}
        for row in rows:  # entity spans point into the request, as in Bitext
            if row["entity_type"]:
                assert row["instruction"][int(row["start_offset"]):int(row["end_offset"])] == row["entity_value"]
    assert not (requests["train"] & requests["validation"] or requests["train"] & requests["test"]
                or requests["validation"] & requests["test"])
    first = data.splits["test"][0]
    assert [t["role"] for t in first.messages] == ["system", "user", "assistant"]
    assert set(first.meta) == {"intent", "category"}
    with pytest.raises(UserInputError, match="has no Bitext_Sample_Customer_Support_Training_Dataset.csv"):
        CustomerSupportRepliesDataModule(data_dir=str(SAMPLE_DIR), tokenizer=model_dirs["llama"])


@pytest.mark.slow
def test_pack_reads_real_bitext_with_intent_stratified_splits(model_dirs):
    folder = DATA_ROOT / "bitext_customer_support"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found (set LIGHTNING_ADAPTERS_DATA)")
    data = CustomerSupportRepliesDataModule(data_dir=str(folder), tokenizer=model_dirs["llama"])
    sizes = {split: len(rows) for split, rows in data.splits.items()}
    assert sizes == {"train": 3653, "validation": 408, "test": 453}
    intents = {split: {d.meta["intent"] for d in rows} for split, rows in data.splits.items()}
    assert len(intents["train"]) == 27 and intents["test"] == intents["validation"] == intents["train"]


# ---- end to end with the generation head ---------------------------------------------------------------------
STRATEGIES = pick("bottleneck", "lora", "ia3", "prompt", prefix={"reparameterize": False})


def tiny_trainer(**kwargs) -> L.Trainer:
    return L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, num_sanity_val_steps=0, **kwargs)


def test_fit_validate_predict_on_tiny_llama(tmp_path, model_dirs):
    L.seed_everything(0)
    data = CustomerSupportRepliesDataModule(tokenizer=model_dirs["llama"], batch_size=8, eval_batch_size=4,
                                            max_length=96)
    head = GenerationHead(max_new_tokens=4, metrics=["perplexity", "rouge", "bleu"], generate_during_validation=True)
    model = AdapterModule(model_dirs["llama"], strategy=Lora(r=4), head=head, learning_rate=0.01)
    tiny_trainer(max_steps=3, limit_val_batches=0).fit(model, data)
    scores = tiny_trainer().validate(model, data, verbose=False)[0]
    model.eval()
    nll, count = 0.0, 0
    with torch.no_grad():  # perplexity = exp(mean NLL over the reference replies' tokens, end-of-turn included)
        for batch in data.val_dataloader():
            logits = model(batch)[:, :-1]
            labels = batch["labels"][:, 1:]
            keep = labels != -100
            nll += torch.nn.functional.cross_entropy(logits[keep], labels[keep], reduction="sum").item()
            count += int(keep.sum())
    assert count == sum(sum(label != -100 for label in item["labels"]) for item in data._datasets["validation"])
    assert scores["val_perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-4)
    assert {"val_rougeL", "val_bleu"} <= set(scores)
    output = tmp_path / "predictions.jsonl"
    tiny_trainer(callbacks=[JsonlPredictionWriter(str(output))]).predict(model, data, return_predictions=False)
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    tests = data.splits["test"]
    assert [(r["intent"], r["category"], r["source"]) for r in rows] == [
        (d.meta["intent"], d.meta["category"], d.messages[-2]["content"]) for d in tests]
    assert [r["reference"] for r in rows] == [d.messages[-1]["content"].strip() for d in tests]
    # Left-padded batched generation equals generating from each unpadded prompt alone.
    prompt = torch.tensor([data._datasets["test"][0]["prompt_ids"]])
    alone = model.head.generate(model.backbone, {"prompt_input_ids": prompt,
                                                 "prompt_attention_mask": torch.ones_like(prompt)})
    assert rows[0]["generated"] == alone[0]


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_every_strategy_trains_and_generates_dialogue_replies(tmp_path, model_dirs, name):
    L.seed_everything(0)
    path = dialogues(tmp_path, [DIALOGUE, SHORT] * 2)
    data = DialogueDataModule(model_dirs["llama"], train_file=path, test_file=path, validation_fraction=0,
                              batch_size=4)
    model = AdapterModule(model_dirs["llama"], strategy=STRATEGIES[name](), learning_rate=0.01,
                          head=GenerationHead(max_new_tokens=3, metrics=["perplexity", "rouge"]))
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    tiny_trainer(max_steps=2, limit_val_batches=0).fit(model, data)
    after = [p for p in model.parameters() if p.requires_grad]
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))  # the assistant loss trains it
    scores = tiny_trainer().test(model, data, verbose=False)[0]
    assert math.isfinite(scores["test_perplexity"]) and 0 <= scores["test_rougeL"] <= 100
    rows = [r for batch in tiny_trainer().predict(model, data) for r in batch]
    assert len(rows) == 4 and all(isinstance(r["generated"], str) for r in rows)


def test_shipped_configs_use_the_dialogue_pack():
    for name in ("lora", "bottleneck", "bitext"):
        config = yaml.safe_load((REPO / "configs" / "customer_support_replies" / f"{name}.yaml").read_text())
        assert config["data"]["class_path"].endswith("CustomerSupportRepliesDataModule")
        assert config["model"]["init_args"]["head"]["class_path"].endswith("GenerationHead")


def test_cli_fit_exports_an_adapter_that_predicts_jsonl(tmp_path, model_dirs, monkeypatch, capsys):
    """The shipped config on the tiny Llama: fit (+ test), export, then predict from the exported adapter folder."""
    monkeypatch.chdir(tmp_path)
    config = str(REPO / "configs/customer_support_replies/lora.yaml")
    tiny = ["--model.init_args.backbone", model_dirs["llama"], "--model.init_args.head.init_args.max_new_tokens", "4",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    main(["fit", "--config", config, *tiny, "--trainer.max_epochs", "1"])
    assert "test_rougeL" in capsys.readouterr().out
    adapter = tmp_path / "runs/customer_support_replies/lightning_logs/version_0/adapter"
    main(["predict", "--config", config, *tiny, "--model.init_args.adapter", str(adapter)])
    predictions = tmp_path / "runs/customer_support_replies/lightning_logs/version_1/predictions.jsonl"
    rows = [json.loads(line) for line in predictions.open()]
    assert len(rows) == 8 and {"intent", "category", "source", "generated", "reference"} <= set(rows[0])
