"""Where adapters go: a small default table keyed by ``config.model_type``, plus a structural fallback.

Bottleneck adapters wrap the *output projection* of each sublayer (the Linear that writes back into the residual
stream). The table names them for common families; for any other architecture `find_output_projections` traces
one forward pass on the model's dummy inputs and keeps the Linear layers that write hidden-size outputs from an input
no other Linear reads (q/k/v share their input; o_proj and down_proj do not).
"""

from __future__ import annotations

import torch
from torch import nn

from lightning_adapters.strategies.base import is_linear, linear_features, match_target

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
        return {kind: [name for name, module in model.named_modules() if is_linear(module)
                       and match_target(name, pattern)] for kind, pattern in table.items()}
    return _trace_output_projections(model)


def _trace_output_projections(model: nn.Module) -> dict[str, list[str]]:
    hidden = model.config.hidden_size
    inputs_seen: dict[int, list[str]] = {}
    alive = []  # keep traced inputs alive so that id() values are never reused during the trace
    hooks = []
    for name, module in model.named_modules():
        if is_linear(module):
            def record(mod, args, name=name):
                alive.append(args[0])
                inputs_seen.setdefault(id(args[0]), []).append(name)
            hooks.append(module.register_forward_pre_hook(record))
    try:
        with torch.no_grad():
            dummy = {k: v.to(model.device) for k, v in model.dummy_inputs.items()}
            model(**dummy)
    finally:
        for hook in hooks:
            hook.remove()
    found: dict[str, list[str]] = {"attention": [], "ffn": []}
    for readers in inputs_seen.values():
        if len(readers) != 1:
            continue  # an input several projections read (q/k/v, gate/up) is a sublayer input, not an output
        name = readers[0]
        in_features, out_features = linear_features(model.get_submodule(name))
        if out_features == hidden and any(part.isdigit() for part in name.split(".")):
            found["attention" if in_features == hidden else "ffn"].append(name)
    return found


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
        candidates = [f"{scope}.{name}" for name, module in model.get_submodule(scope).named_modules()
                      if is_linear(module) and linear_features(module)[0] == hidden
                      and f"{scope}.{name}" != output_projection]
        if candidates:
            feeding = [c for c in candidates if linear_features(model.get_submodule(c))[1] == width_in]
            return (feeding or candidates)[0]
    raise ValueError(f"no sublayer input found for '{output_projection}'")
