"""ONNX export (`lightning_adapters.onnx_export`): ONNX Runtime computes what PyTorch does, for every strategy.

Each model is exported once at the sample shape (2 x 8) and run by ONNX Runtime at two other batch sizes and lengths
(1 x 5, 4 x 19): equal outputs there prove the batch and sequence axes are dynamic, not frozen at the sample's.
Adapter and head weights are randomised first: adapters start as the identity, which would hide a strategy the
export dropped.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CONFIGS, build_tokenizer
from strategy_table import STRATEGIES, trained
from transformers import AutoModelForCausalLM

from lightning_adapters import (
    AdapterModule,
    GenerationHead,
    QuestionAnsweringHead,
    TokenClassificationHead,
    UserInputError,
    onnx_export,
)
from lightning_adapters.cli import main
from lightning_adapters.onnx_export import HeadOutputs, export_onnx, input_names, sample_inputs

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
pytest.importorskip("onnxscript")

STRATEGY_NAMES = ["bottleneck", "pfeiffer", "parallel", "lora", "ia3", "prompt", "prefix"]
SHAPES = [(1, 5), (4, 19)]  # batch, length: neither is the exported sample's (2, 8)
LABELS = ["negative", "neutral", "positive"]


@pytest.fixture(scope="module")
def gpt2_lm(tmp_path_factory) -> str:
    """A tiny GPT-2 with its LM head saved (conftest's model_dirs hold base models only). GPT-2 rather than Llama:
    its Conv1D projections are the other path LoRA and IA3 wrap, and it exports in about half the time."""
    path = tmp_path_factory.mktemp("onnx_lm") / "gpt2"
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(copy.deepcopy(CONFIGS["gpt2"])).save_pretrained(path)
    build_tokenizer().save_pretrained(path)
    return str(path)


def build(family: str, strategy: str, model_dirs: dict[str, str], gpt2_lm: str) -> AdapterModule:
    if family == "bert":  # encoder + sequence classification
        return trained(AdapterModule(model_dirs["bert"], strategy=STRATEGIES[strategy].build(), label_names=LABELS))
    # decoder + generation head: the LM logits of one forward pass
    return trained(AdapterModule(gpt2_lm, strategy=STRATEGIES[strategy].build(), head=GenerationHead()))


def max_diff_at(module: AdapterModule, path: Path, shapes: list[tuple[int, int]]) -> float:
    """Largest |ONNX Runtime - PyTorch| over all outputs at ``shapes``."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    module.eval()
    worst = 0.0
    for batch, length in shapes:
        inputs = sample_inputs(module, batch, length, seed=7 * batch + length)
        with torch.no_grad():
            expected = HeadOutputs(module)(*inputs)
        expected = expected if isinstance(expected, tuple) else (expected,)
        got = session.run(None, {n: t.numpy() for n, t in zip(input_names(module), inputs, strict=True)})
        for want, have in zip(expected, got, strict=True):
            assert have.shape == tuple(want.shape)
            worst = max(worst, float(np.abs(have - want.numpy()).max()))
    return worst


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_onnx_runtime_equals_pytorch_at_other_shapes(family, strategy, model_dirs, gpt2_lm, tmp_path):
    module = build(family, strategy, model_dirs, gpt2_lm)
    report = export_onnx(module, tmp_path / "model.onnx")
    diff = max_diff_at(module, report.path, SHAPES)
    print(f"\n{family} {strategy}: max |ORT - torch| = {diff:.1e} (export check {report.max_abs_diff:.1e})")
    assert diff <= 1e-4 and report.max_abs_diff <= 1e-4
    card = json.loads(report.sidecar.read_text())
    assert list(card["inputs"]) == ["input_ids", "attention_mask"]
    assert card["inputs"]["input_ids"]["shape"] == ["batch", "sequence"]
    assert card["outputs"]["logits"]["shape"][0] == "batch"
    assert card["label_names"] == (LABELS if family == "bert" else None)
    assert card["tokenizer"] == module.backbone_name and card["precision"] == "fp32"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.json"]  # no temporary left


@pytest.mark.parametrize("head", ["token", "qa"])
def test_token_classification_and_qa_heads(head, model_dirs, tmp_path):
    kind = {"token": (TokenClassificationHead(), ["O", "B-ORG", "I-ORG"]), "qa": (QuestionAnsweringHead(), None)}
    module = trained(AdapterModule(model_dirs["bert"], strategy=STRATEGIES["lora"].build(), head=kind[head][0],
                                      label_names=kind[head][1]))
    report = export_onnx(module, tmp_path / "model.onnx")
    assert max_diff_at(module, report.path, SHAPES) <= 1e-4
    card = json.loads(report.sidecar.read_text())
    if head == "qa":  # the question/context segments reach BERT's type embeddings, as QADataModule's batches do
        assert list(card["inputs"]) == ["input_ids", "attention_mask", "token_type_ids"]
        assert list(card["outputs"]) == ["start_logits", "end_logits"]
    else:
        assert card["outputs"]["logits"]["shape"][:2] == ["batch", "sequence"]


@pytest.fixture(scope="module")
def traced(model_dirs) -> tuple[AdapterModule, object]:
    """A randomised BERT + bottleneck classifier and its fp32 ONNX graph, traced once for the tests below: they test
    what export_onnx does after tracing (precision conversion, verification, writing), so they reuse the graph."""
    module = trained(AdapterModule(model_dirs["bert"], strategy=STRATEGIES["bottleneck"].build(),
                                      label_names=LABELS)).eval()
    return module, onnx_export.trace(module, onnx_export.DEFAULT_OPSET)


def test_fp16_from_an_adapter_folder_and_int8_stay_close(traced, tmp_path, monkeypatch):
    module, graph = traced
    monkeypatch.setattr(onnx_export, "trace", lambda *_: graph)
    module.save_adapter(str(tmp_path / "adapter"))
    half = export_onnx(tmp_path / "adapter", tmp_path / "half.onnx", precision="fp16")  # what the CLI passes
    int8 = export_onnx(module, tmp_path / "int8.onnx", precision="int8")
    half_diff, int8_diff = max_diff_at(module, half.path, SHAPES), max_diff_at(module, int8.path, SHAPES)
    print(f"\nfp16: max diff {half_diff:.1e}, argmax agreement {half.argmax_agreement:.2f}; "
          f"int8: max diff {int8_diff:.1e}, argmax agreement {int8.argmax_agreement:.2f}")
    assert half_diff < 1e-2  # measured ~4e-4 on logits of magnitude ~1.5
    assert int8_diff < 0.1 and int8.argmax_agreement >= 0.8  # drift, reported: measured ~2.5e-2, argmax all equal
    assert json.loads(int8.sidecar.read_text())["verified"]["tolerance"] is None  # int8 drift is reported, not refused


def test_a_failed_verification_writes_nothing_and_keeps_the_old_file(traced, tmp_path, monkeypatch):
    module, graph = traced
    monkeypatch.setattr(onnx_export, "trace", lambda *_: graph)
    (tmp_path / "model.onnx").write_text("old")
    monkeypatch.setitem(onnx_export.TOLERANCE, "fp32", -1.0)  # no output can be that close
    with pytest.raises(UserInputError, match="differ from PyTorch's") as err:
        export_onnx(module, tmp_path / "model.onnx")
    assert "\n" not in str(err.value)
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"] and (tmp_path / "model.onnx").read_text() == "old"


def test_the_export_command_writes_onnx_from_an_adapter_folder(traced, tmp_path, monkeypatch, capsys):
    module, graph = traced
    monkeypatch.setattr(onnx_export, "trace", lambda *_: graph)
    module.save_adapter(str(tmp_path / "adapter"))
    main(["export", "--adapter", str(tmp_path / "adapter"), "--onnx", str(tmp_path / "m.onnx"), "--precision", "fp16"])
    assert f"wrote {tmp_path / 'm.onnx'}" in capsys.readouterr().out
    assert json.loads((tmp_path / "m.onnx.json").read_text())["precision"] == "fp16"
    assert max_diff_at(module, tmp_path / "m.onnx", SHAPES) < 1e-2
    with pytest.raises(SystemExit) as stop:
        main(["export", "--adapter", str(tmp_path / "adapter"), "--merged", str(tmp_path / "hf"), "--precision",
              "int8"])
    assert stop.value.code == 2 and "--precision applies to --onnx" in capsys.readouterr().err
    assert not (tmp_path / "hf").exists()


@pytest.fixture(scope="module")
def small_module(model_dirs) -> AdapterModule:
    return AdapterModule(model_dirs["bert"], strategy=STRATEGIES["lora"].build(), label_names=LABELS)


@pytest.mark.parametrize("case, match", [
    ("precision", "precision must be one of fp32, fp16, int8"),
    ("opset", "opset must be an integer >= 18"),
    ("missing folder", "does not exist — create"),
    ("out is a folder", "is a folder — pass the path of the .onnx file"),
    ("no adapter folder", "adapter folder .* does not exist"),
    ("bfloat16 base", "the frozen base is torch.bfloat16 — load it in float32"),
])
def test_bad_inputs_are_one_line_and_write_nothing(case, match, small_module, model_dirs, tmp_path):
    out = {"missing folder": tmp_path / "nope" / "model.onnx", "out is a folder": tmp_path}.get(case,
                                                                                                tmp_path / "m.onnx")
    source = tmp_path / "no-adapter" if case == "no adapter folder" else small_module
    if case == "bfloat16 base":
        source = AdapterModule(model_dirs["bert"], strategy=STRATEGIES["lora"].build(), label_names=LABELS,
                               dtype="bfloat16")
    options = {"precision": "int4"} if case == "precision" else {"opset": 13} if case == "opset" else {}
    with pytest.raises(UserInputError, match=match) as err:
        export_onnx(source, out, **options)
    assert "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []
