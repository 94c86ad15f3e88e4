r"""(IA)^3: learned vectors that rescale keys, values and the feed-forward activations.

    k' = l_k * (W_k x),    v' = l_v * (W_v x),    y = W_down (l_ff * a)    with a the FFN activation

Every vector starts at ones, so at step 0 the adapted model computes exactly what the base model computes. Scaling an
output is scaling the rows of ``W`` (and the bias); scaling an input is scaling the columns of ``W``; both fold into
the base weight exactly (`merge_adapters`) and come out again by division (`unmerge_adapters`). GPT-2's ``c_attn``
and ModernBERT's ``Wqkv`` compute queries, keys and values in one fused projection: only the key and value thirds of
their output are scaled, as the paper prescribes.

Where: a table of known families (``config.model_type``), else a structural fallback (`targets.
find_key_value_projections`): one traced forward finds, in each block, the key/value projections (those sharing one
input inside an attention module, the query excepted) and the FFN output projection (whose input is the activation).
A fused q/k/v projection found that way is used only when its layout is known (``FUSED_QKV``); others are refused.

Paper: https://arxiv.org/abs/2205.05638 (Liu et al. 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and
Cheaper than In-Context Learning").
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from lightning_adapters.errors import UserInputError
from lightning_adapters.strategies.base import (
    AdapterLayer,
    Strategy,
    innermost,
    linear_features,
    match_target,
    replace_module,
)
from lightning_adapters.strategies.layers import Layers, check_layers, keep_layers
from lightning_adapters.strategies.targets import find_key_value_projections, model_type, select_linear

_BERT_LIKE = (["key", "value"], r".*\.layer\.\d+\.output\.dense")  # not attention.output.dense
_LLAMA_LIKE = (["k_proj", "v_proj"], ["down_proj"])
# model_type -> (key/value projections, feed-forward output projections whose *input* is scaled)
DEFAULT_TARGETS: dict[str, tuple[list[str], str | list[str]]] = {
    "bert": _BERT_LIKE, "roberta": _BERT_LIKE, "xlm-roberta": _BERT_LIKE, "electra": _BERT_LIKE,
    "camembert": _BERT_LIKE, "distilbert": (["k_lin", "v_lin"], ["lin2"]),
    "gpt2": (["attn.c_attn"], ["mlp.c_proj"]), "modernbert": (["attn.Wqkv"], ["mlp.Wo"]),
    "llama": _LLAMA_LIKE, "mistral": _LLAMA_LIKE, "qwen2": _LLAMA_LIKE, "qwen3": _LLAMA_LIKE, "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE, "t5": (["k", "v"], ["wo"]), "bart": (["k_proj", "v_proj"], ["fc2"]),
    "mbart": (["k_proj", "v_proj"], ["fc2"]),
}
FUSED_QKV = ("c_attn", "Wqkv")  # fused query/key/value projections: output = [q | k | v], equal widths


class IA3Layer(AdapterLayer):
    """Wraps one Linear or Conv1D (``base_layer``) and rescales its output, or its input when ``feedforward``.

    Args:
        base_layer: the frozen projection.
        feedforward: scale the input (the FFN activation) instead of the output.
        span: ``(start, end)``: scale only these output features (the key/value part of a fused projection).
    """

    def __init__(self, base_layer: nn.Module, feedforward: bool, span: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.base_layer = base_layer
        in_features, out_features = linear_features(base_layer)
        self.feedforward = feedforward
        self.span = span if span is not None else (0, in_features if feedforward else out_features)
        self.width = in_features if feedforward else out_features
        self.ia3_l = nn.Parameter(torch.ones(self.span[1] - self.span[0]))
        self.merged = False

    def full_scale(self) -> torch.Tensor:
        """The scale of every input (feedforward) or output feature: ones outside ``span``, exact under products."""
        start, end = self.span
        if start == 0 and end == self.width:
            return self.ia3_l  # the usual case: no concatenation (a copy) per forward
        ones = self.ia3_l.new_ones
        return torch.cat([ones(start), self.ia3_l, ones(self.width - end)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged or not self.active:
            return self.base_layer(x)  # merged: the scaling already lives in the base weight
        scale = self.full_scale()
        # Scale in the adapter's fp32 and cast back, so a half-precision base keeps fp32 vectors.
        if self.feedforward:
            return self.base_layer((x.to(scale.dtype) * scale).to(x.dtype))
        h = self.base_layer(x)
        return (h.to(scale.dtype) * scale).to(h.dtype)

    def merge(self) -> None:
        """Multiply the base weight's rows (output scaling; bias too) or columns (input scaling) in place."""
        if self.merged:
            raise UserInputError("IA3 layer is already merged — merging twice would scale twice; call unmerge() first")
        if (self.ia3_l == 0).any():
            raise UserInputError("IA3 vector has zero entries: merging would be irreversible — keep it unmerged")
        self._rescale(self.full_scale().detach().float(), divide=False)
        self.merged = True

    def unmerge(self) -> None:
        """Divide the merged scaling out of the base weight again."""
        if not self.merged:
            raise UserInputError("IA3 layer is not merged — there is nothing to unmerge")
        self._rescale(self.full_scale().detach().float(), divide=True)
        self.merged = False

    @torch.no_grad()
    def _rescale(self, scale: torch.Tensor, divide: bool) -> None:
        weight, bias = self.base_layer.weight, self.base_layer.bias
        scale = scale.to(weight.device)
        # Linear weight is (out, in); Conv1D's is (in, out). Output features are rows of Linear, columns of Conv1D.
        along_rows = self.feedforward == isinstance(innermost(self.base_layer), Conv1D)
        shaped = scale[:, None] if along_rows else scale[None, :]
        weight.copy_((weight.float() / shaped if divide else weight.float() * shaped).to(weight.dtype))
        if bias is not None and not self.feedforward:
            bias.copy_((bias.float() / scale if divide else bias.float() * scale).to(bias.dtype))


class IA3(Strategy):
    """(IA)^3: rescale keys, values and the feed-forward activations of every block.

    Args:
        target_modules: projections whose *output* is scaled (regex matching whole names, or a list of names or
            ``.suffix``es). Default: the key and value projections of known families (``config.model_type``).
        feedforward_modules: projections whose *input* is scaled, wrapped too (PEFT also accepts them listed in
            ``target_modules``). Default: the family's FFN output projections, or none when ``target_modules`` is
            given.
        exclude_modules: modules to leave alone, with the same matching rules.
        layers: which transformer layers get adapters — indices, slices, ``first k`` / ``last k``
            (`lightning_adapters.strategies.layers`); default: every layer.
    """

    peft_type = "IA3"  # `peft_export` writes ia3_l per wrapped layer, feedforward_modules for input-side ones

    def __init__(self, target_modules: str | list[str] | None = None,
                 feedforward_modules: str | list[str] | None = None,
                 exclude_modules: str | list[str] | None = None, layers: Layers = None) -> None:
        check_layers(layers, "IA3")
        self.target_modules = target_modules
        self.feedforward_modules = feedforward_modules
        self.exclude_modules = exclude_modules
        self.layers = layers

    def apply(self, model: nn.Module) -> None:
        names, feedforward = self._targets(model)
        for name in names:
            base = model.get_submodule(name)
            span = None if name in feedforward else fused_kv_span(base, name)
            layer = IA3Layer(base, feedforward=name in feedforward, span=span)
            layer.to(device=base.weight.device)
            replace_module(model, name, layer)

    def _targets(self, model: nn.Module) -> tuple[list[str], set[str]]:
        """(modules to wrap, the subset whose input is scaled); feed-forward modules are always wrapped."""
        if self.target_modules is not None:
            targets, ff_spec = self.target_modules, self.feedforward_modules
        else:
            targets, default_ff = DEFAULT_TARGETS.get(model_type(model)) or structural_targets(model)
            ff_spec = self.feedforward_modules if self.feedforward_modules is not None else default_ff
        names = select_linear(model, targets, self.exclude_modules, "IA3")
        feedforward = select_linear(model, ff_spec, None, "IA3 feedforward_modules") if ff_spec else []
        # Exclusions apply after matching, so excluding every feed-forward module is allowed, not an error.
        feedforward = [name for name in feedforward if not (self.exclude_modules
                                                            and match_target(name, self.exclude_modules))]
        wrapped = keep_layers(model, names + [name for name in feedforward if name not in names], self.layers, "IA3")
        return wrapped, set(feedforward) & set(wrapped)


def structural_targets(model: nn.Module) -> tuple[list[str], list[str]]:
    """(key/value projections, FFN output projections) of a family missing from the table, found by tracing; a clear
    refusal when none are found."""
    config = getattr(model, "config", None)
    found: tuple[list[str], list[str], list[str]] = ([], [], [])
    if getattr(config, "hidden_size", None) and hasattr(model, "dummy_inputs"):
        found = find_key_value_projections(model)
    keys_values, fused, ffn = found
    known = [name for name in fused if name.rpartition(".")[2] in FUSED_QKV]
    if keys_values or known:
        return keys_values + known, ffn
    unknown = f" (fused q/k/v projections of unknown layout: {fused[0]!r}, ...)" if fused else ""
    raise UserInputError(f"no default IA3 targets for model_type '{model_type(model)}' and no key/value projections "
                         f"found by structure{unknown} — pass target_modules (its key/value projections) and "
                         f"feedforward_modules (its FFN output projections); known types: "
                         f"{', '.join(sorted(DEFAULT_TARGETS))}")


def fused_kv_span(module: nn.Module, name: str) -> tuple[int, int] | None:
    """The key/value output features of a fused q/k/v projection (the last two thirds), or None for any other."""
    in_features, out_features = linear_features(module)
    if name.rpartition(".")[2] in FUSED_QKV and out_features == 3 * in_features:
        return in_features, out_features
    return None
