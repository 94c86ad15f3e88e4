"""The generation head on tiny GPT-2, Llama and T5 language models: loss masking against HF's own loss, metrics
against the reference packages (rouge-score, sacrebleu), generation with every strategy (KV cache on == off),
prompt-tuned generation == generation from the concatenated input, adapter round trips, and its refusals."""

from __future__ import annotations

import copy
import json
import math
import warnings
from pathlib import Path

import pytest
import sacrebleu
import torch
from conftest import CONFIGS, build_tokenizer
from lightning import Trainer
from rouge_score import rouge_scorer
from strategy_table import pick
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, GenerationConfig

from lightning_adapters import AdapterModule, Lora, PromptTuning, UserInputError, load_adapter, save_adapter
from lightning_adapters.data.summarization import SummarizationDataModule
from lightning_adapters.heads.generation import GenerationHead
from lightning_adapters.text_metrics import BLEU, ROUGE, Perplexity, split_sentences

LM_FAMILIES = ["gpt2", "llama", "t5"]
STRATEGIES = pick("bottleneck", "lora", "ia3", "prefix", "prompt", prefix={"reparameterize": False})
SOURCES = ["the company profit rose in the quarter", "bank card cut", "net sales fell and shares dropped"]
TARGETS = ["profit rose", "card cut", "sales fell"]


def build_lm(family: str, seed: int = 0):
    torch.manual_seed(seed)
    auto = AutoModelForSeq2SeqLM if family == "t5" else AutoModelForCausalLM
    return auto.from_config(copy.deepcopy(CONFIGS[family])).eval().requires_grad_(False)


def save_lm_dirs(root: Path) -> dict[str, str]:
    """Tiny LMs *with* their LM heads saved (conftest's model_dirs hold base models: Llama's head would be random)."""
    tok, dirs = build_tokenizer(), {}
    for family in LM_FAMILIES:
        build_lm(family).save_pretrained(root / family)
        tok.save_pretrained(root / family)
        dirs[family] = str(root / family)
    return dirs


@pytest.fixture(scope="session")
def lm_dirs(tmp_path_factory) -> dict[str, str]:
    return save_lm_dirs(tmp_path_factory.mktemp("tiny_lms"))


def generation_batch(family: str) -> dict:
    """The batch contract: decoder-only [prompt; target] with labels on the target only, left-padded prompts."""
    tok = build_tokenizer()
    eos = tok.eos_token_id
    rows = []
    for source, target in zip(SOURCES, TARGETS, strict=True):
        src, tgt = tok(source)["input_ids"], tok(target)["input_ids"] + [eos]
        rows.append((src, tgt) if family == "t5" else (src + tgt, [-100] * len(src) + tgt, src))
    width = max(len(r[0]) for r in rows)
    pad = lambda seqs, value, left=False: torch.tensor(  # noqa: E731
        [[value] * (max(map(len, seqs)) - len(s)) + s if left else s + [value] * (max(map(len, seqs)) - len(s))
         for s in seqs])
    ids = pad([r[0] for r in rows], tok.pad_token_id)
    batch = {"input_ids": ids, "attention_mask": pad([[1] * len(r[0]) for r in rows], 0),
             "references": list(TARGETS), "sources": list(SOURCES), "meta": [{"id": i} for i in range(3)]}
    assert ids.shape[1] == width
    if family == "t5":
        batch["labels"] = pad([r[1] for r in rows], -100)
    else:
        batch["labels"] = pad([r[1] for r in rows], -100)
        batch["prompt_input_ids"] = pad([r[2] for r in rows], tok.pad_token_id, left=True)
        batch["prompt_attention_mask"] = pad([[1] * len(r[2]) for r in rows], 0, left=True)
    return batch


def perturb(module: AdapterModule, seed: int = 1) -> None:
    """Random adapter weights: a freshly initialised adapter is often the identity, which proves nothing."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator) * 0.5)


# ---- metrics against the reference packages --------------------------------------------------------------------
def test_rouge_equals_the_rouge_score_package_with_best_of_several_references():
    preds = ["The cat sat on the mat. It was happy.", "profits rose sharply", "nothing matches here"]
    refs = [["A cat was sitting on the mat.\nIt looked happy."], ["profit rose", "sales rising sharply today"],
            "completely different words"]
    metric = ROUGE()
    metric.update(preds[:2], refs[:2])
    metric.update(preds[2:], refs[2:])
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    expected = {k: 0.0 for k in ("rouge1", "rouge2", "rougeL", "rougeLsum")}
    for pred, ref in zip(preds, refs, strict=True):
        ref = [ref] if isinstance(ref, str) else ref
        scores = scorer.score_multi([split_sentences(r) for r in ref], split_sentences(pred))
        for key in expected:
            expected[key] += 100 * scores[key].fmeasure / len(preds)
    result = metric.compute()
    assert set(result) == set(expected)
    for key, value in expected.items():
        assert result[key].item() == pytest.approx(value, abs=1e-4), key
    assert split_sentences("One. Two! Three? four") == "One.\nTwo!\nThree?\nfour"
    assert result["rougeLsum"] != result["rougeL"]  # summary-level LCS really sees the sentence split
    assert ROUGE().compute() == {}  # nothing generated (validation without generation): nothing reported


def test_bleu_equals_sacrebleu_corpus_bleu():
    preds = ["the cat is on the mat", "there is a cat on the mat today", "profit rose in the quarter"]
    refs = [["the cat is on the mat"], ["a cat is on the mat", "there is a cat on the mat"], "profit rose sharply"]
    metric = BLEU()
    metric.update(preds, refs)
    # sacrebleu wants reference streams of equal length: pad the missing second references with the first
    streams = [[r[0] if isinstance(r, list) else r for r in refs],
               [r[-1] if isinstance(r, list) else r for r in refs]]
    assert metric.compute().item() == pytest.approx(sacrebleu.corpus_bleu(preds, streams).score, abs=1e-3)


def test_perplexity_is_exp_of_total_nll_over_total_tokens():
    metric = Perplexity()
    metric.update(torch.tensor(6.0), 3)
    metric.update(torch.tensor(1.0), 1)
    assert metric.compute().item() == pytest.approx(math.exp(7 / 4))


# ---- loss masking ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", LM_FAMILIES)
def test_loss_is_hf_loss_on_the_target_tokens_only(family, lm_dirs):
    module = AdapterModule(lm_dirs[family], strategy=Lora(r=4), head=GenerationHead()).eval()
    batch = generation_batch(family)
    logits = module(batch)
    loss = module.head.loss(logits, batch)
    plain = build_lm(family)
    reference = plain(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
    assert loss.item() == pytest.approx(reference.loss.item(), abs=1e-5)  # LoRA starts as the identity
    if family != "t5":  # the loss ignores the prompt: changing prompt-only label positions changes nothing
        prompt_logits = logits.clone()
        prompt_logits[:, :2] = torch.randn_like(prompt_logits[:, :2])
        assert module.head.loss(prompt_logits, batch).item() == pytest.approx(loss.item(), abs=1e-6)
    module.head.update_metrics(module.test_metrics, logits, batch, module.backbone, "test")
    assert module.test_metrics.compute()["test_perplexity"].item() == pytest.approx(math.exp(loss.item()), rel=1e-5)


# ---- generation with every strategy ------------------------------------------------------------------------------
@pytest.mark.parametrize("family", LM_FAMILIES)
@pytest.mark.parametrize("method", list(STRATEGIES))
def test_every_strategy_generates_the_same_with_and_without_kv_cache(family, method, lm_dirs):
    module = AdapterModule(lm_dirs[family], strategy=STRATEGIES[method](), head=GenerationHead(max_new_tokens=6))
    perturb(module.eval())
    batch = generation_batch(family)
    ids = batch["input_ids"] if family == "t5" else batch["prompt_input_ids"]
    mask = batch["attention_mask"] if family == "t5" else batch["prompt_attention_mask"]
    settings = module.head.generation_config(module.backbone)
    with torch.no_grad():
        cached = module.backbone.generate(input_ids=ids, attention_mask=mask, generation_config=settings)
        uncached = module.backbone.generate(input_ids=ids, attention_mask=mask, generation_config=settings,
                                            use_cache=False)
    assert torch.equal(cached, uncached)
    texts = module.head.generate(module.backbone, batch)
    plain = build_lm(family).generate(input_ids=ids, attention_mask=mask, generation_config=settings)
    assert not torch.equal(cached, plain)  # the adapter changes what is generated
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)


@pytest.mark.parametrize("family", LM_FAMILIES)
@pytest.mark.parametrize("beams", [1, 2])
def test_prompt_tuned_generation_equals_generation_from_the_concatenated_input(family, beams):
    tok = build_tokenizer()
    prefix = tok(["profit loss sales rose"], add_special_tokens=False, return_tensors="pt")["input_ids"]
    n = prefix.shape[1]
    model = build_lm(family)
    PromptTuning(num_virtual_tokens=n).apply(model)
    with torch.no_grad():
        model.prompt_tuning.prompt.copy_(model.get_input_embeddings()(prefix)[0])
    tok.padding_side = "right" if family == "t5" else "left"
    batch = tok(SOURCES, padding=True, return_tensors="pt")
    rows = batch["input_ids"].shape[0]
    settings = GenerationConfig(max_new_tokens=8, num_beams=beams, pad_token_id=tok.pad_token_id, eos_token_id=None,
                                decoder_start_token_id=0 if family == "t5" else None)
    out = model.generate(**batch, generation_config=settings)
    concatenated = {"input_ids": torch.cat([prefix.expand(rows, -1), batch["input_ids"]], 1),
                    "attention_mask": torch.cat([torch.ones(rows, n, dtype=torch.long), batch["attention_mask"]], 1)}
    reference = build_lm(family).generate(**concatenated, generation_config=settings)
    if family != "t5":  # decoders return the prompt too: the reference's has the N prefix tokens in front
        reference = reference[:, n:]
    assert out.shape[1] > (0 if family == "t5" else batch["input_ids"].shape[1])
    assert torch.equal(out, reference)


def test_prompt_tuning_refuses_a_legacy_cache_and_a_mismatched_mask():
    model = build_lm("gpt2")
    PromptTuning(num_virtual_tokens=2).apply(model)
    ids = torch.tensor([[6, 7, 8]])
    with pytest.raises(UserInputError, match="needs a transformers Cache"):
        model(input_ids=ids, past_key_values=((torch.zeros(1),),))
    cache = model(input_ids=ids, use_cache=True).past_key_values
    with pytest.raises(UserInputError, match="needs a 2-D attention_mask over 4 positions"):
        model(input_ids=ids[:, :1], past_key_values=cache, attention_mask=torch.ones(1, 6, dtype=torch.long))


# ---- the head inside AdapterModule -------------------------------------------------------------------------------
@pytest.mark.parametrize("family", LM_FAMILIES)
def test_adapter_round_trip_reproduces_generated_text(family, lm_dirs, tmp_path):
    module = AdapterModule(lm_dirs[family], strategy=Lora(r=4), head=GenerationHead(max_new_tokens=5, num_beams=2,
                                                                                       metrics=["rouge", "bleu"]))
    perturb(module.eval())
    assert list(module.head.parameters()) == []  # the frozen LM head: no new weights
    batch = generation_batch(family)
    rows = module.head.predict(module.backbone, batch)
    save_adapter(module, tmp_path / "adapter")
    reloaded = load_adapter(tmp_path / "adapter").eval()
    assert reloaded.head.hparams() == module.head.hparams()
    assert reloaded.head.hparams()["init_args"]["metrics"] == ["rouge", "bleu"]
    assert torch.equal(reloaded(batch), module(batch))
    assert reloaded.head.predict(reloaded.backbone, batch) == rows
    assert [r["id"] for r in rows] == [0, 1, 2] and [r["source"] for r in rows] == SOURCES
    assert [r["reference"] for r in rows] == TARGETS


def test_validation_generates_only_when_asked_and_test_scores_the_generated_text(lm_dirs):
    batch = generation_batch("gpt2")
    for during_validation in (False, True):
        module = AdapterModule(lm_dirs["gpt2"], strategy=Lora(r=4), label_names=None,
                               head=GenerationHead(max_new_tokens=4, generate_during_validation=during_validation))
        module.eval()
        logits = module(batch)
        module.head.update_metrics(module.val_metrics, logits, batch, module.backbone, "val")
        assert ("val_rougeL" in module.val_metrics.compute()) == during_validation
    module.head.update_metrics(module.test_metrics, logits, batch, module.backbone, "test")
    texts = module.head.generate(module.backbone, batch)
    expected = ROUGE()
    expected.update(texts, batch["references"])
    result = module.test_metrics.compute()
    assert result["test_rougeL"].item() == pytest.approx(expected.compute()["rougeL"].item())


@pytest.mark.parametrize("during_validation", [False, True])
def test_a_validation_epoch_logs_text_metrics_only_when_text_was_generated(during_validation, lm_dirs, tmp_path):
    """No generation in validation: no ROUGE/BLEU key at all (not a fake 0.0) and no torchmetrics warning; loss and
    perplexity are logged either way."""
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"source": s, "target": t}) + "\n" for s, t in zip(SOURCES, TARGETS,
                                                                                          strict=True)))
    data = SummarizationDataModule(tokenizer=lm_dirs["gpt2"], train_file=str(rows), validation_file=str(rows),
                                   test_file=str(rows), batch_size=2)
    head = GenerationHead(max_new_tokens=3, metrics=["rouge", "bleu", "perplexity"],
                          generate_during_validation=during_validation)
    module = AdapterModule(lm_dirs["gpt2"], strategy=Lora(r=4), head=head)
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.validate(module, data, verbose=False)
    logged, text = set(trainer.logged_metrics), {"val_bleu", "val_rouge1", "val_rouge2", "val_rougeL", "val_rougeLsum"}
    assert {"val_loss", "val_perplexity"} <= logged
    assert text <= logged if during_validation else not text & logged
    assert not [w for w in caught if "``compute`` method" in str(w.message)]


def test_refusals_name_the_problem(lm_dirs, model_dirs):
    with pytest.raises(UserInputError, match="unknown generation metric"):
        GenerationHead(metrics=["rouge", "meteor"])
    with pytest.raises(UserInputError, match="num_beams=0 is out of range"):
        GenerationHead(num_beams=0)
    with pytest.raises(UserInputError, match="cannot generate text"):
        AdapterModule(model_dirs["bert"], strategy=Lora(r=4), head=GenerationHead())
    module = AdapterModule(lm_dirs["gpt2"], strategy=Lora(r=4), head=GenerationHead()).eval()
    batch = generation_batch("gpt2")
    batch["prompt_input_ids"], batch["prompt_attention_mask"] = batch["input_ids"], batch["attention_mask"]
    with pytest.raises(ValueError, match="LEFT-padded"):
        module.head.generate(module.backbone, batch)
