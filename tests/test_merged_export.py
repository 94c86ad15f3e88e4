"""Merged export (``lightning-adapters export --adapter DIR --merged OUT``): transformers alone, loading OUT with its
Auto class, computes our outputs (fp32, 1e-4) for LoRA and IA3 on tiny BERT classifiers (sequence with pooler
pooling, token, QA) and a tiny Llama causal LM (logits and greedy tokens); a fresh interpreter loads OUT without
importing us; heads and strategies without an exact transformers equivalent, and bad folders, are refused in one
line with nothing written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import build_tokenizer, sample_batch
from safetensors.torch import load_file
from test_generation import lm_dirs  # noqa: F401 — a fixture: tiny LMs with their LM heads
from transformers import (
    AutoModelForCausalLM,
    AutoModelForQuestionAnswering,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
)

from lightning_adapters import (
    IA3,
    AdapterModule,
    Bottleneck,
    ClassificationHead,
    FullFineTuning,
    GenerationHead,
    Lora,
    PrefixTuning,
    PromptTuning,
    QuestionAnsweringHead,
    TokenClassificationHead,
    save_adapter,
)
from lightning_adapters.cli import main
from lightning_adapters.merged_export import export_merged

LLAMA_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]
STRATEGIES = {"lora": lambda: Lora(r=2, target_modules="all-linear"), "ia3": IA3}
HEADS = {  # name -> (head, label names, transformers class)
    "sequence": (lambda: ClassificationHead(pooling="pooler"), ["negative", "neutral", "positive"],
                 AutoModelForSequenceClassification),
    "token": (TokenClassificationHead, ["O", "B-ORG", "I-ORG"], AutoModelForTokenClassification),
    "qa": (QuestionAnsweringHead, None, AutoModelForQuestionAnswering),
}
REFUSED = "does not merge into the base — export ONNX or the adapter folder instead"


def perturb(module: AdapterModule, seed: int = 1, scale: float = 0.3) -> AdapterModule:
    """Trained-looking weights: a fresh adapter is the identity (LoRA's B and IA3's vectors), which would hide bugs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in module.trainable_parameters():
            param.add_(torch.randn(param.shape, generator=generator) * scale)
    return module.eval()


def export(module: AdapterModule, tmp_path: Path, name: str = "merged") -> Path:
    folder = save_adapter(module, tmp_path / "adapter")
    main(["export", "--adapter", str(folder), "--merged", str(tmp_path / name)])
    return tmp_path / name


def refused(args: list[str], capsys) -> str:
    """The one line ``lightning-adapters export`` prints when it exits with status 2."""
    capsys.readouterr()  # what building the module printed
    with pytest.raises(SystemExit) as stop:
        main(["export", *args])
    assert stop.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lightning-adapters: error: "), lines
    return lines[0]


def ours(module: AdapterModule, batch: dict) -> torch.Tensor:
    with torch.no_grad():
        out = module(batch)
    return torch.stack(out, -1) if isinstance(out, tuple) else out


def theirs(model, batch: dict) -> torch.Tensor:
    with torch.no_grad():
        out = model(**batch)
    return torch.stack([out.start_logits, out.end_logits], -1) if hasattr(out, "start_logits") else out.logits


def assert_plain(out: Path) -> None:
    keys = load_file(out / "model.safetensors")
    assert not [k for k in keys if "lora_" in k or "ia3_" in k or "base_layer" in k]
    assert all(t.dtype == torch.float32 for t in keys.values())


@pytest.mark.parametrize("strategy", list(STRATEGIES))
@pytest.mark.parametrize("head", list(HEADS))
def test_bert_heads_load_with_transformers_and_give_our_outputs(head, strategy, model_dirs, tmp_path):
    make_head, labels, auto = HEADS[head]
    module = perturb(AdapterModule(model_dirs["bert"], strategy=STRATEGIES[strategy](), head=make_head(),
                                   label_names=labels))
    out = export(module, tmp_path)
    model = auto.from_pretrained(out).eval()
    batch = sample_batch(build_tokenizer())
    diff = (theirs(model, batch) - ours(module, batch)).abs().max().item()
    print(f"bert {head} {strategy}: max abs diff {diff:.2e}")
    assert diff < 1e-4
    assert_plain(out)
    if labels:
        assert model.config.id2label == dict(enumerate(labels)) and model.config.label2id["B-ORG" if head == "token"
                                                                                         else "neutral"] == 1


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_llama_causal_lm_gives_our_logits_and_greedy_tokens(strategy, lm_dirs, tmp_path):  # noqa: F811
    chosen = Lora(r=2, target_modules=LLAMA_LINEAR) if strategy == "lora" else IA3()
    # smaller steps: LoRA on every projection and the LM head with 0.3 would give logits near 50, where fp32 rounding
    # alone reaches 1e-4
    module = perturb(AdapterModule(lm_dirs["llama"], strategy=chosen, head=GenerationHead(max_new_tokens=6)), scale=0.1)
    out = export(module, tmp_path)
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = build_tokenizer()
    tokenizer.padding_side = "left"
    batch = dict(tokenizer(["the company profit rose", "bank card"], padding=True, return_tensors="pt"))
    diff = (theirs(model, batch) - ours(module, batch)).abs().max().item()
    ours_tokens = module.backbone.generate(**batch, generation_config=module.task_head.generation_config(
        module.backbone))
    their_tokens = model.generate(**batch)  # the decoding settings travel in generation_config.json
    print(f"llama causal LM {strategy}: max abs logit diff {diff:.2e}, tokens {their_tokens[:, -6:].tolist()}")
    assert diff < 1e-4
    assert torch.equal(ours_tokens, their_tokens) and their_tokens.shape[1] == batch["input_ids"].shape[1] + 6
    assert_plain(out)


def test_t5_seq2seq_lm_gives_our_logits_and_greedy_tokens(lm_dirs, tmp_path):  # noqa: F811
    module = perturb(AdapterModule(lm_dirs["t5"], strategy=Lora(r=2), head=GenerationHead(max_new_tokens=4)),
                     scale=0.1)
    out = export(module, tmp_path)
    model = AutoModelForSeq2SeqLM.from_pretrained(out).eval()
    batch = sample_batch(build_tokenizer())
    batch = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
             "labels": batch["input_ids"][:, :3].clone()}
    diff = (theirs(model, batch) - ours(module, batch)).abs().max().item()
    inputs = {key: batch[key] for key in ("input_ids", "attention_mask")}
    ours_tokens = module.backbone.generate(**inputs, generation_config=module.task_head.generation_config(
        module.backbone))
    print(f"t5 seq2seq LM lora: max abs logit diff {diff:.2e}")
    assert diff < 1e-4 and torch.equal(ours_tokens, model.generate(**inputs))


def test_a_decoder_classifier_without_bias_exports_with_its_pad_token(model_dirs, tmp_path):
    module = perturb(AdapterModule(model_dirs["llama"], strategy=IA3(), head=ClassificationHead(pooling="last"),
                                   label_names=["a", "b", "c"]))
    with torch.no_grad():
        module.task_head.classifier.bias.zero_()  # transformers' score layer has none
    out = export(module, tmp_path)
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    batch = sample_batch(build_tokenizer())  # right-padded: the last real token differs per row
    diff = (theirs(model, batch) - ours(module, batch)).abs().max().item()
    print(f"llama sequence (last token) ia3: max abs diff {diff:.2e}")
    assert diff < 1e-4 and model.config.pad_token_id == build_tokenizer().pad_token_id


def test_full_fine_tuning_exports_as_it_is(model_dirs, tmp_path):
    module = perturb(AdapterModule(model_dirs["bert"], strategy=FullFineTuning(),
                                   head=TokenClassificationHead(), label_names=["O", "B-ORG", "I-ORG"]), scale=0.02)
    with pytest.warns(UserWarning, match="full fine-tuning exports every base weight"):
        out = export(module, tmp_path)
    batch = sample_batch(build_tokenizer())
    diff = (theirs(AutoModelForTokenClassification.from_pretrained(out).eval(), batch) - ours(module, batch)).abs()
    print(f"bert token full: max abs diff {diff.max().item():.2e}")
    assert diff.max().item() < 1e-4


def test_a_bfloat16_module_in_memory_exports_its_weights_in_fp32(model_dirs, tmp_path):
    module = perturb(AdapterModule(model_dirs["bert"], strategy=Lora(r=2), head=TokenClassificationHead(),
                                   label_names=["O", "B-ORG", "I-ORG"], dtype="bfloat16"))
    out = export_merged(module, tmp_path / "merged")
    assert_plain(out)
    assert module.backbone.embeddings.word_embeddings.weight.dtype == torch.bfloat16  # the module is left as it was
    batch = sample_batch(build_tokenizer())
    model = AutoModelForTokenClassification.from_pretrained(out).eval()
    assert (theirs(model, batch) - ours(module.float(), batch)).abs().max().item() < 1e-4  # bf16 values, fp32 math


def test_a_fresh_interpreter_loads_it_without_this_package(model_dirs, tmp_path):
    module = perturb(AdapterModule(model_dirs["bert"], strategy=Lora(r=2), head=ClassificationHead(pooling="pooler"),
                                   label_names=["a", "b"]))
    out = export(module, tmp_path)
    script = ("import json, sys, torch\nfrom transformers import AutoModelForSequenceClassification, AutoTokenizer\n"
              f"out = {str(out)!r}\ntok = AutoTokenizer.from_pretrained(out)\n"
              "model = AutoModelForSequenceClassification.from_pretrained(out).eval()\n"
              f"batch = tok({json.dumps(['the company profit rose in the quarter', 'bank card cut'])}, padding=True, "
              "return_tensors='pt')\nwith torch.no_grad():\n    logits = model(**batch).logits\n"
              "assert not [m for m in sys.modules if m.startswith('lightning_adapters')]\n"
              "print(json.dumps(logits.tolist()))\n")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=tmp_path,
                         env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    texts = build_tokenizer()(["the company profit rose in the quarter", "bank card cut"], padding=True,
                              return_tensors="pt")
    expected = ours(module, dict(texts))
    assert (torch.tensor(json.loads(run.stdout.strip().splitlines()[-1])) - expected).abs().max().item() < 1e-4


def test_exporting_again_replaces_an_earlier_export(model_dirs, tmp_path):
    module = perturb(AdapterModule(model_dirs["bert"], strategy=IA3(), head=TokenClassificationHead(),
                                   label_names=["O", "B-ORG", "I-ORG"]))
    out = export(module, tmp_path)
    first = load_file(out / "model.safetensors")["classifier.weight"]
    perturb(module, seed=2)
    export(module, tmp_path)
    assert not torch.equal(first, load_file(out / "model.safetensors")["classifier.weight"])


@pytest.mark.parametrize("strategy", [Bottleneck, lambda: PromptTuning(num_virtual_tokens=2),
                                      lambda: PrefixTuning(num_virtual_tokens=2, hidden=8)],
                         ids=["bottleneck", "prompt", "prefix"])
def test_strategies_that_do_not_merge_are_refused(strategy, model_dirs, tmp_path, capsys):
    module = AdapterModule(model_dirs["bert"], strategy=strategy(), head=ClassificationHead(pooling="pooler"),
                           label_names=["a", "b"])
    folder = save_adapter(module, tmp_path / "adapter")
    line = refused(["--adapter", str(folder), "--merged", str(tmp_path / "out")], capsys)
    assert REFUSED in line and not (tmp_path / "out").exists()


@pytest.mark.parametrize("family, pooling, expected", [
    ("bert", "mean", "no transformers class averages the tokens — train with pooling: pooler"),
    ("bert", "first", "classify the pooler's dense+tanh of the first token"),
    ("llama", "last", "score layer without bias, this head's classifier has a trained bias"),
    ("roberta", "pooler", "RobertaForSequenceClassification is not laid out as this backbone plus one Linear"),
])
def test_classification_heads_without_an_exact_transformers_head_are_refused(family, pooling, expected, model_dirs,
                                                                            tmp_path, capsys):
    module = perturb(AdapterModule(model_dirs[family], strategy=Lora(r=2), head=ClassificationHead(pooling=pooling),
                                   label_names=["a", "b"]))
    folder = save_adapter(module, tmp_path / "adapter")
    line = refused(["--adapter", str(folder), "--merged", str(tmp_path / "out")], capsys)
    assert expected in line and not (tmp_path / "out").exists()


def test_a_tied_lm_head_is_refused(lm_dirs, tmp_path, capsys):  # noqa: F811
    module = perturb(AdapterModule(lm_dirs["gpt2"], strategy=Lora(r=2, target_modules=["c_attn", "lm_head"]),
                                   head=GenerationHead()))
    folder = save_adapter(module, tmp_path / "adapter")
    line = refused(["--adapter", str(folder), "--merged", str(tmp_path / "out")], capsys)
    assert "'lm_head' shares its weight with 'transformer.wte.weight' (tied embeddings)" in line
    assert not (tmp_path / "out").exists()


def test_bad_folders_and_a_foreign_out_are_refused_and_nothing_is_written(model_dirs, tmp_path, capsys):
    missing = refused(["--adapter", str(tmp_path / "nowhere"), "--merged", str(tmp_path / "out")], capsys)
    assert "no adapter_config.json in" in missing
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "adapter_config.json").write_text("{not json")
    assert "is not valid JSON" in refused(["--adapter", str(corrupt), "--merged", str(tmp_path / "out")], capsys)
    assert not (tmp_path / "out").exists()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    line = refused(["--adapter", str(corrupt), "--merged", str(foreign)], capsys)
    assert "holds files a merged export does not write (e.g. 'notes.txt')" in line
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    assert "one of the arguments --merged --onnx is required" in refused(["--adapter", str(corrupt)], capsys)


@pytest.mark.slow
def test_real_minilm_with_lora(tmp_path):
    module = perturb(AdapterModule("minilm", strategy=Lora(), head=ClassificationHead(pooling="pooler"),
                                   label_names=["negative", "neutral", "positive"]))
    out = export(module, tmp_path)
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    batch = dict(AutoTokenizer.from_pretrained(out)(["Net sales rose 5% in the quarter.", "The bank cut its outlook"],
                                                  padding=True, return_tensors="pt"))
    diff = (theirs(model, batch) - ours(module, batch)).abs().max().item()
    print(f"minilm sequence lora: max abs diff {diff:.2e}")
    assert diff < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["lora", "ia3"])
def test_real_smollm2_causal_lm(strategy, tmp_path):
    """The bundled SmolLM2 decoder (read from GGUF): the plain folder gives our logits and greedy tokens."""
    chosen = Lora(r=4) if strategy == "lora" else IA3()
    module = perturb(AdapterModule("smollm2", strategy=chosen, head=GenerationHead(max_new_tokens=5)), scale=0.02)
    out = export(module, tmp_path)
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    tokenizer.padding_side = "left"
    batch = dict(tokenizer(["Net sales rose in the quarter", "The bank"], padding=True, return_tensors="pt"))
    diff = (theirs(model, batch) - ours(module, batch)).abs().max().item()
    ours_tokens = module.backbone.generate(**batch, generation_config=module.task_head.generation_config(
        module.backbone))
    their_tokens = model.generate(**batch)
    print(f"smollm2 causal LM {strategy}: max abs logit diff {diff:.2e}")
    # measured: LoRA 3.8e-5, IA3 5.6e-4 on logits up to ~30 (IA3 folded into 30 layers' weights: fp32 rounding of
    # (l*W)x against l*(Wx), relative 2e-5); the greedy tokens are identical
    assert diff < 1e-3
    assert torch.equal(ours_tokens, their_tokens)
    assert_plain(out)
