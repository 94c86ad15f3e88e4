"""Export an adapted model with its task head to ONNX, checked against PyTorch with ONNX Runtime.

    from lightning_adapters.onnx_export import export_onnx
    export_onnx("runs/adapter", "deploy/model.onnx")                      # fp32, verified
    export_onnx("runs/adapter", "deploy/model-int8.onnx", precision="int8")  # drift reported, not refused

The ONNX model takes ``input_ids`` and ``attention_mask`` (int64, ``batch x sequence``, both axes dynamic) and
returns the head's outputs: ``logits`` (classification ``batch x labels``, token classification ``batch x sequence x
labels``, a generation head's LM logits of one forward pass ``batch x sequence x vocab``; no generate loop) or
``start_logits`` and ``end_logits`` (question answering). Every strategy works, since the whole module is traced:
adapter layers, LoRA/IA3 wrappers, prompt tuning's pre-hook and trim hook, prefix tuning's attention function.
A JSON sidecar (``<out>.json``) names the inputs, outputs and their axes, the labels, the tokenizer to encode with
(a folder or hub id ``AutoTokenizer.from_pretrained`` reads) and the measured difference to PyTorch.

Exporter: the dynamo one (``torch.export`` then ``torch.onnx.export(dynamo=True)``), not the TorchScript one. With
torch 2.13 / transformers 5 the TorchScript tracer fails on prefix tuning (``aten::new_full`` with a boolean fill in
its alias analysis), is deprecated, and freezes any shape Python reads as a constant without a word; ``torch.export``
with ``Dim.DYNAMIC`` refuses to specialise a dynamic axis instead, so a model that exports takes any batch and length.

Precision: ``fp32`` must match PyTorch within ``1e-4`` (times the logits' scale when above 1); ``fp16`` converts the
fp32 graph's weights and arithmetic to half precision with inputs and outputs kept as they are (ONNX Runtime's own
``float16`` converter; runs on its CPU provider), within ``1e-2`` likewise; ``int8`` is ONNX Runtime's dynamic
quantization (int8 weights, activations quantized per call): its drift is measured and reported, never refused.
"""

from __future__ import annotations

import importlib.util
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lightning_adapters.atomic import atomic_write, check_can_create
from lightning_adapters.backbone import resolve
from lightning_adapters.errors import UserInputError, first_line
from lightning_adapters.heads import QuestionAnsweringHead
from lightning_adapters.module import AdapterModule, load_adapter

PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_OPSET = 18  # the dynamo exporter's own default: the lowest opset it translates every op we use to
MIN_OPSET = 18
INPUT_NAMES = ("input_ids", "attention_mask")  # + token_type_ids for question answering on a model that reads them
AXIS_NAMES = ("batch", "sequence")
TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2, "int8": None}  # times max(1, largest |PyTorch output|); int8: reported
EXPORT_SHAPE = (2, 8)  # batch, length of the traced sample: neither 0 nor 1, which torch.export would specialise
CHECK_SHAPES = ((2, 8), (3, 13))  # verified after export: the second is not the traced shape (dynamic axes)
PROTOBUF_LIMIT = 2**31 - 2**26  # a single .onnx file holds under 2 GiB; weights above it need external data files


@dataclass
class OnnxExport:
    """What `export_onnx` wrote and how close ONNX Runtime came to PyTorch (None when not verified).

    ``argmax_agreement``: the share of rows (classification) or positions whose top-scoring output index is the
    same in both.
    """

    path: Path
    sidecar: Path
    precision: str
    opset: int
    max_abs_diff: float | None = None
    argmax_agreement: float | None = None


class HeadOutputs(nn.Module):
    """``forward(input_ids, attention_mask)`` -> the module's head outputs as a tensor or a tuple of tensors."""

    def __init__(self, module: AdapterModule) -> None:
        super().__init__()
        self.module = module

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor | tuple:
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            batch["token_type_ids"] = token_type_ids
        outputs = self.module(batch)
        return tuple(outputs) if isinstance(outputs, tuple | list) else outputs


def export_onnx(source: AdapterModule | str | os.PathLike, out_path: str | os.PathLike, precision: str = "fp32",
                opset: int = DEFAULT_OPSET, verify: bool = True, backbone: str | None = None) -> OnnxExport:
    """Write ``source`` (a module, or an adapter folder loaded onto its base) as one ONNX file plus its sidecar.

    Args:
        source: an `AdapterModule` (its active adapter is exported) or a folder written by ``save_adapter``.
        out_path: the ``.onnx`` file to write (its folder must exist); the sidecar goes to ``<out_path>.json``.
        precision: ``fp32``, ``fp16`` or ``int8`` (see the module docstring).
        opset: ONNX opset, at least 18.
        verify: run ONNX Runtime on two sample batches and refuse (nothing written) if fp32/fp16 outputs differ
            from PyTorch by more than the tolerance.
        backbone: for a folder, another copy of its base model (default: the recorded one).
    """
    out = check_arguments(precision, opset, out_path)
    require_onnx_packages()
    if not isinstance(source, AdapterModule):
        source = load_folder(source, backbone)
    check_exportable(source)
    with eval_mode(source):
        model_proto = trace(source, opset)
        report = OnnxExport(out, Path(f"{out}.json"), precision, opset)

        def write(tmp: str) -> None:
            save_at_precision(model_proto, tmp, precision)
            if verify:
                report.max_abs_diff, report.argmax_agreement = check_against_torch(source, tmp, precision)

        # Each file appears whole or not at all, the model only once it passed the check; the sidecar follows it
        # (it is read from the written model), so a failed check leaves both files as they were.
        atomic_write(out, write)
        atomic_write(report.sidecar, lambda tmp: Path(tmp).write_text(json.dumps(sidecar(source, report), indent=2)))
    return report


def check_arguments(precision: str, opset: int, out_path: str | os.PathLike) -> Path:
    """Refuse bad settings and an output path that cannot be written, before any model loads."""
    if precision not in PRECISIONS:
        raise UserInputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r} — pick one")
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET:
        raise UserInputError(f"opset must be an integer >= {MIN_OPSET} (the dynamo exporter's lowest), got "
                             f"{opset!r} — pass e.g. opset={DEFAULT_OPSET}")
    out = Path(out_path)
    if out.is_dir():
        raise UserInputError(f"'{out}' is a folder — pass the path of the .onnx file to write, e.g. "
                             f"'{out / 'model.onnx'}'")
    if not out.parent.is_dir():
        raise UserInputError(f"the folder of '{out}' does not exist — create '{out.parent}' first, or pass a path in "
                             "an existing folder")
    check_can_create(out.parent, f"'{out.name}'")
    return out


def load_folder(folder: str | os.PathLike, backbone: str | None) -> AdapterModule:
    if not Path(folder).is_dir():
        raise UserInputError(f"adapter folder '{folder}' does not exist — pass the folder save_adapter() or the CLI "
                             "exported (<run folder>/adapter)")
    return load_adapter(folder, backbone)


def check_exportable(module: AdapterModule) -> None:
    """Refuse what one ONNX graph of ``(input_ids, attention_mask) -> head outputs`` cannot hold."""
    if module.parallel:
        raise UserInputError("Parallel adapters give one output per adapter — set_active_adapters() one adapter (or "
                             "a Stack) before exporting, and export each adapter on its own")
    if getattr(module.task_head, "encoder_decoder", False):
        raise UserInputError("an encoder-decoder generation model needs decoder inputs that one (input_ids, "
                             "attention_mask) graph does not take — export a decoder-only or an encoder model")
    # the frozen base only: adapters and head are kept fp32 whatever the base's dtype (AdapterModule._apply)
    low = {str(p.dtype) for p in module.backbone.parameters() if p.is_floating_point() and not p.requires_grad}
    low.discard(str(torch.float32))
    if low:
        raise UserInputError(f"the frozen base is {', '.join(sorted(low))} — load it in float32 (no dtype) and pick "
                             "precision='fp16' for a half-precision ONNX model")
    size = sum(p.numel() * p.element_size() for p in module.parameters())
    if size > PROTOBUF_LIMIT:
        raise UserInputError(f"the model's weights take {size / 2**30:.1f} GiB, over the 2 GiB one .onnx file holds "
                             "— external-data export is not supported yet; export a smaller base")


def require_onnx_packages() -> None:
    missing = [name for name in ("onnx", "onnxruntime", "onnxscript") if importlib.util.find_spec(name) is None]
    if missing:
        raise UserInputError(f"ONNX export needs {', '.join(missing)} — pip install 'lightning-adapters[onnx]'")


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Dropout off while tracing and comparing; every submodule's own mode back afterwards."""
    modes = {sub: sub.training for sub in module.modules()}
    module.eval()
    try:
        yield
    finally:
        for sub, training in modes.items():
            sub.training = training


def input_names(module: AdapterModule) -> tuple[str, ...]:
    """The graph's inputs: what the task's data passes the backbone. Only question answering keeps token_type_ids
    (question and context segments); the other DataModules drop them, so the model sees its zeros."""
    segments = getattr(module.backbone.config, "type_vocab_size", 0) not in (0, None)
    return (*INPUT_NAMES, "token_type_ids") if segments and isinstance(module.task_head, QuestionAnsweringHead) \
        else INPUT_NAMES


def sample_inputs(module: AdapterModule, batch: int, length: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random token ids, the first row right-padded by a quarter of its length (so masking is exercised); segment
    ids (when an input) 0 then 1, as a question then its context."""
    generator = torch.Generator().manual_seed(seed)
    vocab = module.backbone.get_input_embeddings().num_embeddings
    input_ids = torch.randint(0, vocab, (batch, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, length - max(1, length // 4):] = 0
    segments = (torch.arange(length) >= length // 2).long().expand(batch, length).contiguous()
    return (input_ids, attention_mask, segments)[:len(input_names(module))]


def output_names(module: AdapterModule) -> tuple[str, ...]:
    return ("start_logits", "end_logits") if isinstance(module.task_head, QuestionAnsweringHead) else ("logits",)


def trace(module: AdapterModule, opset: int) -> Any:
    """The fp32 ONNX ModelProto of ``module``, batch and sequence axes dynamic and named."""
    names = input_names(module)
    dynamic = tuple({0: torch.export.Dim.DYNAMIC, 1: torch.export.Dim.DYNAMIC} for _ in names)
    try:
        with torch.no_grad():
            program = torch.export.export(HeadOutputs(module), sample_inputs(module, *EXPORT_SHAPE),
                                          dynamic_shapes=dynamic, strict=False)
            onnx_program = torch.onnx.export(program, input_names=list(names),
                                             output_names=list(output_names(module)), opset_version=opset,
                                             dynamo=True, verbose=False)
    except Exception as err:  # torch.export's errors run to pages: the first line names the op or the guard
        raise UserInputError(f"torch could not export this model to ONNX ({type(err).__name__}: "
                             f"{first_line(err, 300)}) — report it with the backbone, strategy and head") from err
    return name_axes(onnx_program.model_proto)


def name_axes(model_proto: Any) -> Any:
    """Call torch.export's symbolic sizes (``s0``, ``s1``...) ``batch`` and ``sequence`` wherever they appear in
    the graph's inputs and outputs, so the sidecar and any ONNX viewer say what each axis is."""
    graph = model_proto.graph
    first = graph.input[0].type.tensor_type.shape.dim
    renames = {first[i].dim_param: AXIS_NAMES[i] for i in range(2) if first[i].dim_param}
    for value in [*graph.input, *graph.output]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in renames:
                dim.dim_param = renames[dim.dim_param]
    return model_proto


def save_at_precision(model_proto: Any, path: str, precision: str) -> None:
    import onnx

    if precision == "fp32":
        onnx.save(model_proto, path)
    elif precision == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        onnx.save(convert_float_to_float16(model_proto, keep_io_types=True), path)
    else:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        with tempfile.TemporaryDirectory() as folder:
            fp32 = Path(folder) / "fp32.onnx"
            onnx.save(model_proto, fp32)
            quantize_dynamic(fp32, path, weight_type=QuantType.QInt8)


def check_against_torch(module: AdapterModule, path: str, precision: str) -> tuple[float, float]:
    """(max |ONNX Runtime - PyTorch|, argmax agreement) over `CHECK_SHAPES`; refuses a difference over tolerance
    (fp32, fp16) or a non-finite output (any precision)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    diff, agree, total, scale = 0.0, 0, 0, 1.0
    for shape in CHECK_SHAPES:
        inputs = sample_inputs(module, *shape, seed=sum(shape))
        with torch.no_grad():
            expected = HeadOutputs(module)(*inputs)
        expected = [t.float().numpy() for t in (expected if isinstance(expected, tuple) else (expected,))]
        feed = {name: tensor.numpy() for name, tensor in zip(input_names(module), inputs, strict=True)}
        for want, have in zip(expected, session.run(None, feed), strict=True):
            if want.shape != have.shape or not np.isfinite(have).all():
                raise UserInputError(f"ONNX Runtime's {precision} outputs ({have.shape}, finite: "
                                     f"{bool(np.isfinite(have).all())}) do not match PyTorch's {want.shape} — "
                                     "nothing was written; report it, or try precision='fp32'")
            diff, scale = max(diff, float(np.abs(have - want).max())), max(scale, float(np.abs(want).max()))
            agree += int((have.argmax(-1) == want.argmax(-1)).sum())
            total += want.argmax(-1).size
    tolerance = TOLERANCE[precision]
    if tolerance is not None and diff > tolerance * scale:
        raise UserInputError(f"ONNX Runtime's {precision} outputs differ from PyTorch's by {diff:.2e} (tolerance "
                             f"{tolerance * scale:.1e}) — nothing was written; report it, or try precision='fp32'")
    return diff, agree / total


def sidecar(module: AdapterModule, report: OnnxExport) -> dict[str, Any]:
    """How to call the ONNX model: inputs, outputs, axes, labels, tokenizer; and how close it was checked to be."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    adapter = module.active_adapters[-1]
    return {
        "format": "lightning-adapters-onnx/1",
        "inputs": {i.name: {"dtype": "int64", "shape": i.shape} for i in session.get_inputs()},
        "outputs": {o.name: {"dtype": "float32", "shape": o.shape} for o in session.get_outputs()},
        "label_names": module.labels_of(adapter),
        "backbone": module.backbone_name,
        # where AutoTokenizer.from_pretrained finds it without this library (an alias resolved to its folder)
        "tokenizer": resolve(module.backbone_name).path,
        "head": type(module.head_of(adapter)).__name__,
        "strategy": type(module.strategy_of(adapter)).__name__,
        "precision": report.precision, "opset": report.opset,
        "verified": {"max_abs_diff": report.max_abs_diff, "argmax_agreement": report.argmax_agreement,
                     "tolerance": TOLERANCE[report.precision], "shapes": [list(s) for s in CHECK_SHAPES]}
        if report.max_abs_diff is not None else None,
    }

