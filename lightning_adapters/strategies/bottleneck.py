r"""Bottleneck adapters: Houlsby, Pfeiffer and parallel.

A bottleneck adapter is a two-layer MLP with a residual connection, inserted at the output projection of a sublayer:

    sequential (Houlsby 2019, Pfeiffer 2021):  h' = h + up(act(down(h)))            with h = W_o z
    parallel   (He et al. 2022):               h' = W_o z + s * up(act(down(x)))    with x the sublayer input

``up`` starts at zero, so at step 0 the adapted model computes exactly what the base model computes.
Houlsby places adapters after the attention and the feed-forward sublayers, Pfeiffer after the feed-forward only,
parallel beside the feed-forward sublayer, scaled by ``s``.

Papers: https://arxiv.org/abs/1902.00751 (Houlsby), https://arxiv.org/abs/2005.00247 (Pfeiffer),
https://arxiv.org/abs/2110.04366 (parallel).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from lightning_adapters.errors import UserInputError
from lightning_adapters.strategies.base import AdapterLayer, Strategy, find_modules, linear_features, replace_module
from lightning_adapters.strategies.layers import Layers, check_layers, keep_layers
from lightning_adapters.strategies.targets import find_output_projections, find_sublayer_input

Sublayer = Literal["attention", "ffn"]
_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}
_PLACEMENT: dict[str, tuple[list[str], bool]] = {  # variant -> (sublayers, parallel?)
    "houlsby": (["attention", "ffn"], False),
    "pfeiffer": (["ffn"], False),
    "parallel": (["ffn"], True),
}


class BottleneckLayer(AdapterLayer):
    """Wraps one output projection (``base_layer``) with a bottleneck adapter, sequential or parallel."""

    def __init__(self, base_layer: nn.Module, size: int, activation: str, dropout: float, scaling: float,
                 input_width: int | None = None) -> None:
        super().__init__()
        self.base_layer = base_layer
        out_features = linear_features(base_layer)[1]
        self.down = nn.Linear(input_width or out_features, size)
        self.up = nn.Linear(size, out_features)
        self.act = _ACTIVATIONS[activation]()
        self.dropout = nn.Dropout(dropout)
        self.scaling = scaling
        self.parallel = input_width is not None
        self._sublayer_input: torch.Tensor | None = None  # set by the tap hook before base_layer runs
        nn.init.normal_(self.down.weight, std=1e-2)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def adapter(self, x: torch.Tensor) -> torch.Tensor:
        # Adapters keep fp32 weights even when the frozen base runs in half precision.
        y = self.up(self.dropout(self.act(self.down(x.to(self.down.weight.dtype)))))
        return self.scaling * y

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.base_layer(z)
        if not self.active:
            self._sublayer_input = None
            return h
        if self.parallel:
            x, self._sublayer_input = self._sublayer_input, None
            if x is None:
                raise RuntimeError("parallel adapter ran without its sublayer input; was the tap module replaced?")
            return h + self.adapter(x).to(h.dtype)
        return h + self.adapter(h).to(h.dtype)

    def tap(self, module: nn.Module, args: tuple) -> None:
        """Forward pre-hook on the sublayer's first projection: remember the sublayer input."""
        self._sublayer_input = args[0]


class Bottleneck(Strategy):
    """Bottleneck adapters on every transformer block.

    Args:
        variant: ``houlsby`` (after attention and FFN), ``pfeiffer`` (after FFN) or ``parallel`` (beside the FFN).
        reduction_factor: bottleneck size = output width // reduction_factor (ignored when ``bottleneck_size``).
        bottleneck_size: explicit bottleneck width.
        activation: non-linearity between the down and up projections.
        dropout: dropout on the bottleneck activations.
        scaling: output scale ``s``; default 1 for sequential adapters and 4 for parallel ones (He et al.).
        sublayers: override where adapters go (``attention``, ``ffn``).
        attention_modules: override the attention output projections (regex string or list of names/suffixes).
        ffn_modules: override the feed-forward output projections (regex string or list of names/suffixes).
        layers: which transformer layers get adapters — indices, slices, ``first k`` / ``last k``
            (`lightning_adapters.strategies.layers`); default: every layer.
    """

    def __init__(self, variant: Literal["houlsby", "pfeiffer", "parallel"] = "pfeiffer", reduction_factor: int = 16,
                 bottleneck_size: int | None = None, activation: Literal["relu", "gelu", "silu", "tanh"] = "relu",
                 dropout: float = 0.0, scaling: float | None = None, sublayers: list[Sublayer] | None = None,
                 attention_modules: str | list[str] | None = None, ffn_modules: str | list[str] | None = None,
                 layers: Layers = None) -> None:
        if variant not in _PLACEMENT:
            raise UserInputError(f"unknown bottleneck variant '{variant}' — use houlsby, pfeiffer or parallel")
        if activation not in _ACTIVATIONS:
            raise UserInputError(f"unknown activation '{activation}' — use one of {', '.join(_ACTIVATIONS)}")
        if reduction_factor < 1 or (bottleneck_size is not None and bottleneck_size < 1):
            raise UserInputError(f"bottleneck reduction_factor and bottleneck_size must be >= 1, got "
                                 f"{reduction_factor} and {bottleneck_size} — e.g. reduction_factor: 16")
        if not 0.0 <= dropout < 1.0:
            raise UserInputError(f"bottleneck dropout must be in [0, 1), got {dropout}")
        check_layers(layers, "bottleneck")
        self.variant = variant
        self.reduction_factor = reduction_factor
        self.bottleneck_size = bottleneck_size
        self.activation = activation
        self.dropout = dropout
        self.scaling = scaling
        self.sublayers = sublayers
        self.attention_modules = attention_modules
        self.ffn_modules = ffn_modules
        self.layers = layers

    def apply(self, model: nn.Module) -> None:
        default_sublayers, parallel = _PLACEMENT[self.variant]
        targets = self._targets(model, self.sublayers or default_sublayers)
        taps = {name: find_sublayer_input(model, name) for name in targets} if parallel else {}
        scaling = self.scaling if self.scaling is not None else (4.0 if parallel else 1.0)
        for name in targets:
            base = model.get_submodule(name)
            width = linear_features(base)[1]
            size = self.bottleneck_size or max(1, width // self.reduction_factor)
            input_width = linear_features(model.get_submodule(taps[name]))[0] if parallel else None
            layer = BottleneckLayer(base, size, self.activation, self.dropout, scaling, input_width)
            layer.to(device=next(base.parameters()).device)
            replace_module(model, name, layer)
            if parallel:
                model.get_submodule(taps[name]).register_forward_pre_hook(layer.tap)

    def _targets(self, model: nn.Module, sublayers: list[str]) -> list[str]:
        overrides = {"attention": self.attention_modules, "ffn": self.ffn_modules}
        found = find_output_projections(model) if None in [overrides[s] for s in sublayers] else {}
        names = []
        for sublayer in sublayers:
            names += find_modules(model, overrides[sublayer]) if overrides[sublayer] else found.get(sublayer, [])
        if not names:
            config = getattr(model, "config", None)
            raise UserInputError(
                f"no {'/'.join(sublayers)} output projection found for a bottleneck adapter in "
                f"{type(model).__name__} (model_type '{getattr(config, 'model_type', '?')}') — pass "
                "attention_modules / ffn_modules naming the projections that write back to the residual stream")
        return keep_layers(model, sorted(set(names), key=names.index), self.layers, "bottleneck")
