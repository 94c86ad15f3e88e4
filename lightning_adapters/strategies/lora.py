r"""LoRA: a trainable low-rank update beside each frozen Linear layer.

    h = W x + s * B A dropout(x),    A in R^{r x in}, B in R^{out x r},    s = alpha / r    (rsLoRA: alpha / sqrt(r))

``A`` starts kaiming-uniform (as in PEFT) and ``B`` at zero, so at step 0 the adapted model computes exactly what the
base model computes. The update is linear in ``x``, so it can be folded into the base weight (``W += s * B A``) for
inference at no extra cost, and taken out again (`merge_adapters` / `unmerge_adapters`). GPT-2's ``Conv1D`` stores
its weight transposed (in x out); the merge transposes the update to match.

Speed: an fp32 ``nn.Linear`` without LoRA dropout, given enough tokens (training batches, long prompts; not one-token
generation steps), runs as one GEMM with ``W' = W + s B A`` (`_LoraLinear`): the same function and gradients up to
float rounding, without the two thin forward GEMMs, the scale and the add over the whole activation; the adapter
gradients come from thin GEMMs laid out as rank-sized rows (~2x faster than autograd's).

Papers: https://arxiv.org/abs/2106.09685 (LoRA), https://arxiv.org/abs/2312.03732 (rsLoRA).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from lightning_adapters.errors import UserInputError
from lightning_adapters.strategies.base import (
    AdapterLayer,
    Strategy,
    adapter_layers,
    innermost,
    linear_features,
    replace_module,
)
from lightning_adapters.strategies.layers import Layers, check_layers, keep_layers
from lightning_adapters.strategies.targets import (
    ALL_LINEAR,
    find_query_value_projections,
    linear_examples,
    model_type,
    select_linear,
)

_BERT_LIKE = ["query", "value"]
_LLAMA_LIKE = ["q_proj", "v_proj"]
# The attention query and value projections, as in the LoRA paper (and PEFT's defaults).
DEFAULT_TARGETS: dict[str, list[str]] = {
    "bert": _BERT_LIKE, "roberta": _BERT_LIKE, "xlm-roberta": _BERT_LIKE, "electra": _BERT_LIKE,
    "camembert": _BERT_LIKE, "deberta-v2": ["query_proj", "value_proj"], "distilbert": ["q_lin", "v_lin"],
    "modernbert": ["Wqkv"], "gpt2": ["c_attn"],
    "llama": _LLAMA_LIKE, "mistral": _LLAMA_LIKE, "mixtral": _LLAMA_LIKE, "qwen2": _LLAMA_LIKE, "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE, "gemma2": _LLAMA_LIKE, "t5": ["q", "v"], "mt5": ["q", "v"],
    "bart": _LLAMA_LIKE, "mbart": _LLAMA_LIKE,
}


class LoraLayer(AdapterLayer):
    """Wraps one Linear or Conv1D (``base_layer``) with a LoRA update; ``merge``/``unmerge`` fold it in and out."""

    def __init__(self, base_layer: nn.Module, r: int, alpha: float, dropout: float, use_rslora: bool) -> None:
        super().__init__()
        self.base_layer = base_layer
        in_features, out_features = linear_features(base_layer)
        self.lora_A = nn.Linear(in_features, r, bias=False)
        self.lora_B = nn.Linear(r, out_features, bias=False)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.scaling = alpha / math.sqrt(r) if use_rslora else alpha / r
        self.merged = False
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged or not self.active:
            return self.base_layer(x)  # merged: the update already lives in the base weight
        if self._fusable(x):
            base = self.base_layer
            return _LoraLinear.apply(x, base.weight, base.bias, self.lora_A.weight, self.lora_B.weight, self.scaling)
        result = self.base_layer(x)
        # Adapters keep fp32 weights even when the frozen base runs in half precision.
        delta = self.lora_B(self.lora_A(self.lora_dropout(x.to(self.lora_A.weight.dtype))))
        return result + (self.scaling * delta).to(result.dtype)

    def _fusable(self, x: torch.Tensor) -> bool:
        """One-GEMM path: a plain fp32 Linear, frozen, no dropout on the LoRA input, no autocast (which would recast
        inside the autograd function), and enough tokens to pay for rebuilding ``W + s B A`` on every call.

        Rebuilding costs ``in * out * (r + 1)`` multiply-adds; the separate path adds ``tokens * r * (in + out)``. They
        break even near ``tokens = in * out / (in + out)`` (192 for a 384-wide square layer). Measured on 2 CPU cores
        (384x384, r 8, fused/unfused time): 2.35 at 1 token, 1.07 at 128, 0.91 at 512 in inference; 1.30, 0.95, 0.91
        with backward. So generation (one token per step) takes the separate path and training batches the fused one."""
        base = self.base_layer
        if type(base) is not nn.Linear:
            return False
        tokens = x.numel() // max(x.shape[-1], 1)
        return (tokens * (base.in_features + base.out_features) >= base.in_features * base.out_features
                and isinstance(self.lora_dropout, nn.Identity)
                and x.dtype == base.weight.dtype == self.lora_A.weight.dtype and not base.weight.requires_grad
                and (base.bias is None or not base.bias.requires_grad) and not torch.is_autocast_enabled(x.device.type))

    def delta_weight(self) -> torch.Tensor:
        """``s * B A`` in fp32, laid out like the base weight (transposed for Conv1D)."""
        delta = self.scaling * (self.lora_B.weight.float() @ self.lora_A.weight.float())
        return delta.T if isinstance(innermost(self.base_layer), Conv1D) else delta

    def merge(self) -> None:
        """Add the update to the base weight in place (in its dtype, computed in fp32); forward then skips it."""
        if self.merged:
            raise UserInputError("LoRA layer is already merged — merging twice would add the update twice; call "
                                 "unmerge() first")
        _add_to_weight(self.base_layer.weight, self.delta_weight(), sign=1.0)
        self.merged = True

    def unmerge(self) -> None:
        """Subtract the merged update from the base weight again."""
        if not self.merged:
            raise UserInputError("LoRA layer is not merged — there is nothing to unmerge")
        _add_to_weight(self.base_layer.weight, self.delta_weight(), sign=-1.0)
        self.merged = False


class _LoraLinear(torch.autograd.Function):
    """``y = x (W + s B A)^T + b`` for a frozen ``W``: the forward and the input gradient are one GEMM each; the
    adapter gradients ``dB = s g^T (x A^T)`` and ``dA = s (g B)^T x`` use rank-row layouts (r x tokens), never the
    full-size ``g^T x`` that autograd through a trainable ``W'`` would compute."""

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling):
        merged = torch.addmm(weight, lora_b, lora_a, alpha=scaling)
        ctx.save_for_backward(x, merged, lora_a, lora_b)
        ctx.scaling = scaling
        return F.linear(x, merged, bias)

    @staticmethod
    def backward(ctx, grad):
        x, merged, lora_a, lora_b = ctx.saved_tensors
        grad_x = grad @ merged if ctx.needs_input_grad[0] else None
        grad_a = grad_b = None
        if ctx.needs_input_grad[3] or ctx.needs_input_grad[4]:
            x2, g2 = x.reshape(-1, x.shape[-1]), grad.reshape(-1, grad.shape[-1])
            if ctx.needs_input_grad[4]:
                grad_b = ((lora_a @ x2.T) @ g2).T.mul_(ctx.scaling)  # (r x tokens) @ (tokens x out)
            if ctx.needs_input_grad[3]:
                grad_a = ((lora_b.T @ g2.T) @ x2).mul_(ctx.scaling)  # (r x tokens) @ (tokens x in)
        return grad_x, None, None, grad_a, grad_b, None


@torch.no_grad()
def _add_to_weight(weight: torch.Tensor, delta: torch.Tensor, sign: float) -> None:
    weight.copy_((weight.float() + sign * delta.to(weight.device)).to(weight.dtype))


class Lora(Strategy):
    """LoRA on the attention projections (or any Linear layers you name).

    Args:
        r: rank of the update.
        alpha: scale numerator: the update is multiplied by ``alpha / r`` (``alpha / sqrt(r)`` with ``use_rslora``).
        dropout: dropout on the LoRA input during training.
        target_modules: where to add LoRA: a regex matching whole module names, a list of names or ``.suffix``es,
            or ``all-linear`` (every Linear inside the transformer blocks). Default: the query and value projections
            of known families (``config.model_type``), else of any family, found by tracing one forward pass.
        exclude_modules: modules to leave alone, with the same matching rules.
        use_rslora: rank-stabilised scaling ``alpha / sqrt(r)`` (Kalajdzievski 2023), better for large ranks.
        layers: which transformer layers get adapters — indices, slices, ``first k`` / ``last k``
            (`lightning_adapters.strategies.layers`); default: every layer.
    """

    peft_type = "LORA"  # `peft_export` writes lora_A/lora_B per wrapped layer

    def __init__(self, r: int = 8, alpha: float = 16, dropout: float = 0.0,
                 target_modules: str | list[str] | None = None, exclude_modules: str | list[str] | None = None,
                 use_rslora: bool = False, layers: Layers = None) -> None:
        if r < 1:
            raise UserInputError(f"LoRA rank r must be a positive integer, got {r}")
        if not 0.0 <= dropout < 1.0:
            raise UserInputError(f"LoRA dropout must be in [0, 1), got {dropout}")
        self.r = r
        self.alpha = alpha
        self.dropout = dropout
        self.target_modules = target_modules
        self.exclude_modules = exclude_modules
        self.use_rslora = use_rslora
        self.layers = layers
        check_layers(layers, "LoRA")

    def apply(self, model: nn.Module) -> None:
        targets = self.target_modules
        if targets is None:
            targets = DEFAULT_TARGETS.get(model_type(model)) or structural_targets(model)
        names = keep_layers(model, select_linear(model, targets, self.exclude_modules, "LoRA"), self.layers, "LoRA")
        for name in names:  # all checked before any layer is built (a rank of 1e9 would try to allocate it)
            smallest = min(linear_features(model.get_submodule(name)))
            if self.r > smallest:
                raise UserInputError(f"LoRA rank r={self.r} exceeds the smaller dimension ({smallest}) of '{name}', "
                                     f"where a higher rank adds nothing — use r <= {smallest}")
        for name in names:
            base = model.get_submodule(name)
            layer = LoraLayer(base, self.r, self.alpha, self.dropout, self.use_rslora)
            layer.to(device=base.weight.device)
            replace_module(model, name, layer)


def structural_targets(model: nn.Module) -> list[str]:
    """Query and value projections of a family missing from the table, found by tracing (`targets.
    find_query_value_projections`); a fused q/k/v projection is taken whole. A clear refusal when none are found."""
    config = getattr(model, "config", None)
    found: tuple[list[str], list[str]] = ([], [])
    if getattr(config, "hidden_size", None) and hasattr(model, "dummy_inputs"):
        found = find_query_value_projections(model)
    names = found[0] + found[1]
    if not names:
        raise UserInputError(f"no default LoRA targets for model_type '{model_type(model)}' and no attention "
                             f"projections found by structure — pass target_modules (e.g. {linear_examples(model)}, "
                             f"or '{ALL_LINEAR}'); known types: {', '.join(sorted(DEFAULT_TARGETS))}")
    return names


def _mergeable(model: nn.Module) -> list[AdapterLayer]:
    layers = [layer for _, layer in adapter_layers(model)]
    unmergeable = sorted({type(layer).__name__ for layer in layers if not hasattr(layer, "merge")})
    if unmergeable:
        raise UserInputError(f"{', '.join(unmergeable)} cannot be merged into the base weights (not linear); only "
                             "LoRA and IA3 layers can")
    if not layers:
        raise UserInputError("the model has no adapter layers to merge — apply a Lora or IA3 strategy first")
    return layers


def merge_adapters(model: nn.Module) -> None:
    """Fold every LoRA/IA3 layer of ``model`` into its base weight (faster inference; `unmerge_adapters` undoes)."""
    layers = _mergeable(model)
    if any(layer.merged for layer in layers):
        raise UserInputError("adapters are already merged — merging twice would apply them twice; call "
                             "unmerge_adapters() first")
    for layer in layers:
        layer.merge()


def unmerge_adapters(model: nn.Module) -> None:
    """Take merged LoRA/IA3 updates out of the base weights again, restoring them up to float rounding."""
    layers = _mergeable(model)
    if not all(layer.merged for layer in layers):
        raise UserInputError("adapters are not merged — there is nothing to unmerge")
    for layer in layers:
        layer.unmerge()
