"""Where adapters go: a small default table keyed by ``config.model_type``, plus a structural fallback.

Bottleneck adapters wrap the *output projection* of each sublayer (the Linear that writes back into the residual
stream). The table names them for common families; for any other architecture `find_output_projections` traces
one forward pass on the model's dummy inputs and keeps the Linear layers that write hidden-size outputs from an input
no other Linear reads (q/k/v share their input; o_proj and down_proj do not). IA3 scales keys, values and the FFN
activation: `find_key_value_projections` finds the projections that share one input inside an attention module, from
the same trace.
"""

from __future__ import annotations

import torch
from torch import nn

from lightning_adapters.errors import UserInputError
from lightning_adapters.strategies.base import (
    adapter_layers,
    find_modules,
    linear_features,
    linear_places,
    match_target,
)

ALL_LINEAR = "all-linear"  # PEFT's spelling for every Linear layer inside the transformer blocks

_BERT_LIKE = {"attention": r".*\.attention\.output\.dense", "ffn": r".*\.layer\.\d+\.output\.dense"}
_LLAMA_LIKE = {"attention": r".*\.self_attn\.o_proj", "ffn": r".*\.mlp\.down_proj"}

OUTPUT_PROJECTIONS: dict[str, dict[str, str]] = {
    "bert": _BERT_LIKE, "roberta": _BERT_LIKE, "xlm-roberta": _BERT_LIKE, "electra": _BERT_LIKE,
    "deberta": _BERT_LIKE, "deberta-v2": _BERT_LIKE, "camembert": _BERT_LIKE,
    "distilbert": {"attention": r".*\.attention\.out_lin", "ffn": r".*\.ffn\.lin2"},
    "modernbert": {"attention": r".*\.attn\.Wo", "ffn": r".*\.mlp\.Wo"},
    "gpt2": {"attention": r".*\.attn\.c_proj", "ffn": r".*\.mlp\.c_proj"},
    "llama": _LLAMA_LIKE, "qwen2": _LLAMA_LIKE, "qwen3": _LLAMA_LIKE, "gemma": _LLAMA_LIKE, "gemma2": _LLAMA_LIKE,
    "t5": {"attention": r".*\.(SelfAttention|EncDecAttention)\.o", "ffn": r".*\.DenseReluDense\.wo"},
    "bart": {"attention": r".*\.(self_attn|encoder_attn)\.out_proj", "ffn": r".*\.fc2"},
    "mbart": {"attention": r".*\.(self_attn|encoder_attn)\.out_proj", "ffn": r".*\.fc2"},
}


def find_output_projections(model: nn.Module) -> dict[str, list[str]]:
    """``{"attention": [...], "ffn": [...]}`` module names, from the table or, failing that, by tracing."""
    table = OUTPUT_PROJECTIONS.get(getattr(model.config, "model_type", ""))
    if table is not None:
        return {kind: [name for name, _ in linear_places(model) if match_target(name, pattern)]
                for kind, pattern in table.items()}
    return _trace_output_projections(model)


def _trace_linear_inputs(model: nn.Module) -> list[tuple[str, int, bool]]:
    """Every Linear call of one forward pass on the model's dummy inputs, in call order: (module name, id of its input,
    whether that input is a token stream of the dummy batch — not e.g. DeBERTa's table of relative positions)."""
    dummy = {k: v.to(model.device) for k, v in model.dummy_inputs.items()}
    batch = next(iter(dummy.values())).shape[0]
    calls: list[tuple[str, int, bool]] = []
    alive = []  # keep traced inputs alive so that id() values are never reused during the trace
    hooks = []
    for name, module in linear_places(model):  # a place an adapter already wraps: its outermost layer
        def record(mod, args, name=name):
            if args:
                alive.append(args[0])
                calls.append((name, id(args[0]), args[0].dim() == 3 and args[0].shape[0] == batch))
        hooks.append(module.register_forward_pre_hook(record))
    layers = [layer for _, layer in adapter_layers(model)]
    active = [layer.active for layer in layers]
    try:
        for layer in layers:  # trace the base model's own data flow (an IA3 input scale makes a new tensor)
            layer.active = False
        with torch.no_grad():
            model(**dummy)
    finally:
        for hook in hooks:
            hook.remove()
        for layer, was in zip(layers, active, strict=True):
            layer.active = was
    return calls


def _trace_output_projections(model: nn.Module,
                              calls: list[tuple[str, int, bool]] | None = None) -> dict[str, list[str]]:
    hidden = model.config.hidden_size
    inputs_seen: dict[int, list[str]] = {}
    for name, input_id, _ in calls if calls is not None else _trace_linear_inputs(model):
        inputs_seen.setdefault(input_id, []).append(name)
    found: dict[str, list[str]] = {"attention": [], "ffn": []}
    for readers in inputs_seen.values():
        if len(readers) != 1:
            continue  # an input several projections read (q/k/v, gate/up) is a sublayer input, not an output
        name = readers[0]
        in_features, out_features = linear_features(model.get_submodule(name))
        if out_features == hidden and _in_block(name):
            found["attention" if in_features == hidden else "ffn"].append(name)
    return found


def _attention_readers(model: nn.Module) -> tuple[list[list[str]], list[str], list[str]]:
    """By tracing: (the projections of each attention module that read one token stream, in call order; fused q/k/v
    candidates; FFN output projections) of every block.

    The projections of one attention module that read the same token stream are its query, key and value, in that
    call order — or, in cross-attention, its key and value, with the query (alone in that module: it reads the other
    stream) put first. Projections beside an FFN output projection (gate/up) belong to the FFN. A lone projection
    that triples its input width beside an attention output projection is a fused q/k/v candidate; its layout
    (``[q | k | v]`` or per head) is not traced.
    """
    hidden = model.config.hidden_size
    calls = _trace_linear_inputs(model)
    found = _trace_output_projections(model, calls)
    ffn_scopes = {name.rpartition(".")[0] for name in found["ffn"]}
    attention_scopes = {name.rpartition(".")[0] for name in found["attention"]}
    groups: dict[tuple[int, str], list[str]] = {}  # (input, parent module) -> its readers, in call order
    for name, input_id, stream in calls:
        scope = name.rpartition(".")[0]
        if stream and _in_block(name) and scope not in ffn_scopes \
                and linear_features(model.get_submodule(name))[0] == hidden:
            readers = groups.setdefault((input_id, scope), [])
            if name not in readers:
                readers.append(name)
    attention, fused = [], []
    pairs = {scope: readers for (_, scope), readers in groups.items() if len(readers) == 2}  # cross-attention k, v
    for (_, scope), readers in groups.items():
        if len(readers) == 3:
            attention.append(readers)
        elif len(readers) == 2:
            queries = [r for (_, other), rs in groups.items() if other == scope and len(rs) == 1 for r in rs]
            attention.append(queries[:1] + readers)  # its query reads the other stream, alone in the same module
        elif len(readers) == 1 and scope in pairs:
            continue  # a cross-attention query, taken with its key and value above
        elif len(readers) == 1 and scope in attention_scopes:
            in_features, out_features = linear_features(model.get_submodule(readers[0]))
            if out_features == 3 * in_features:
                fused.append(readers[0])
    return attention, fused, found["ffn"]


def find_key_value_projections(model: nn.Module) -> tuple[list[str], list[str], list[str]]:
    """By tracing: (key and value projections, fused q/k/v candidates, FFN output projections) of every block."""
    attention, fused, ffn = _attention_readers(model)
    return [name for readers in attention for name in readers[-2:]], fused, ffn  # q, k, v: drop q; cross: k, v


def find_query_value_projections(model: nn.Module) -> tuple[list[str], list[str]]:
    """By tracing: (query and value projections, fused q/k/v candidates) of every block — LoRA's default places."""
    attention, fused, _ = _attention_readers(model)
    return [name for readers in attention for name in (readers[::2] if len(readers) == 3 else readers[1:])], fused


def _in_block(name: str) -> bool:
    """Inside a numbered transformer block: never a pooler, a classifier or an LM head."""
    return any(part.isdigit() for part in name.split("."))


def find_sublayer_input(model: nn.Module, output_projection: str) -> str:
    """The module whose input is the input of the sublayer that ``output_projection`` closes.

    Parallel adapters read the sublayer input. It is the input of the sublayer's first projection: the nearest
    Linear reading hidden-size vectors that feeds ``output_projection``'s width (FFN up-projection), or, for attention,
    the nearest one reading hidden-size vectors (the query projection).
    """
    hidden = model.config.hidden_size
    width_in = linear_features(model.get_submodule(output_projection))[0]
    parts = output_projection.split(".")
    for depth in range(len(parts) - 1, 0, -1):
        scope = ".".join(parts[:depth])
        candidates = [f"{scope}.{name}" for name, module in linear_places(model.get_submodule(scope))
                      if linear_features(module)[0] == hidden and f"{scope}.{name}" != output_projection]
        if candidates:
            feeding = [c for c in candidates if linear_features(model.get_submodule(c))[1] == width_in]
            return (feeding or candidates)[0]
    raise ValueError(f"no sublayer input found for '{output_projection}'")


def model_type(model: nn.Module) -> str:
    return getattr(getattr(model, "config", None), "model_type", None) or type(model).__name__


def select_linear(model: nn.Module, targets: str | list[str], exclude: str | list[str] | None,
                  method: str) -> list[str]:
    """Names of the Linear/Conv1D modules to wrap: ``targets`` (PEFT semantics or ``all-linear``) minus ``exclude``."""
    if targets == ALL_LINEAR:
        # Only inside the numbered transformer blocks: never a pooler, a classifier or an LM head.
        names = [name for name, _ in linear_places(model) if any(part.isdigit() for part in name.split("."))]
    else:
        names = find_modules(model, targets)
    if exclude:
        names = [name for name in names if not match_target(name, exclude)]
    if not names:
        raise UserInputError(f"{method} target_modules {targets!r} (exclude_modules {exclude!r}) match no Linear "
                             f"layer of model_type '{model_type(model)}' — Linear layers are named like "
                             f"{linear_examples(model)}")
    return names


def linear_examples(model: nn.Module, count: int = 6) -> str:
    names = [name for name, _ in linear_places(model)]
    return ", ".join(repr(n) for n in names[:count]) or "(none: the model has no Linear layer)"
