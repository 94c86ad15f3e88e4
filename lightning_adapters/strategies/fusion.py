r"""AdapterFusion (Pfeiffer et al. 2021): a trainable attention over frozen bottleneck adapters' outputs.

At every place where each fused adapter has a sequential bottleneck (Houlsby or Pfeiffer), with ``h`` the sublayer
output and ``z_i = h + f_i(h)`` what adapter ``i`` would output alone:

    o = sum_i softmax_i((h Q) . (z_i K) / T) z_i V

``V`` starts as the identity and ``Q``, ``K`` near zero, so a new fusion starts as the average of the adapters'
outputs. The fused adapters stay frozen and switched off (the fusion layer runs their bottlenecks itself); only
``Q``, ``K``, ``V`` and the task head train. It is a named adapter like any other: `AdapterModule.add_adapter(name,
AdapterFusion(["a", "b", "c"]), head, label_names)`, then `train_adapter(name)`; its folder holds the fusion weights
and head only, and loads onto a module that has the fused adapters.

Paper: https://arxiv.org/abs/2005.00247
"""

from __future__ import annotations

import torch
from torch import nn

from lightning_adapters.errors import UserInputError
from lightning_adapters.strategies.base import AdapterLayer, Strategy, linear_features, linear_places, replace_module
from lightning_adapters.strategies.bottleneck import BottleneckLayer


class FusionLayer(AdapterLayer):
    """Wraps one place (``base_layer``: the outermost layer there) and fuses the bottlenecks ``fused`` hold there."""

    def __init__(self, base_layer: nn.Module, fused: list[BottleneckLayer], temperature: float) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.__dict__["fused"] = fused  # not submodules: their weights belong to their own (frozen) adapters
        width = linear_features(base_layer)[1]
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width)
        self.value = nn.Linear(width, width)
        self.temperature = temperature
        for projection in (self.query, self.key):
            nn.init.normal_(projection.weight, std=1e-2)
            nn.init.zeros_(projection.bias)
        nn.init.eye_(self.value.weight)
        nn.init.zeros_(self.value.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.base_layer(x)  # the fused adapters are switched off: this is the sublayer's own output
        if not self.active:
            return h
        hidden = h.to(self.query.weight.dtype)
        outputs = torch.stack([hidden + layer.adapter(hidden).to(hidden.dtype) for layer in self.fused], dim=-2)
        scores = (self.query(hidden).unsqueeze(-2) * self.key(outputs)).sum(-1) / self.temperature
        weights = scores.softmax(dim=-1).unsqueeze(-1)  # (..., adapters, 1)
        return (weights * self.value(outputs)).sum(-2).to(h.dtype)


class AdapterFusion(Strategy):
    """Fuse named sequential bottleneck adapters of the same module with a trainable attention at each place.

    Args:
        adapters: names of the adapters to fuse (at least two), all sequential bottlenecks at the same places.
        temperature: softmax temperature of the attention over adapters.
    """

    def __init__(self, adapters: list[str], temperature: float = 1.0) -> None:
        if len(adapters) < 2 or len(set(adapters)) != len(adapters):
            raise UserInputError(f"AdapterFusion needs two or more different adapter names, got {adapters!r} — e.g. "
                                 "AdapterFusion(['sentiment', 'topics'])")
        if not temperature > 0:
            raise UserInputError(f"AdapterFusion temperature must be > 0, got {temperature}")
        self.adapters = list(adapters)
        self.temperature = temperature

    def apply(self, model: nn.Module) -> None:
        places = []
        for name, outermost in linear_places(model):
            chain = _chain(outermost)
            found = {layer.adapter_name: layer for layer in chain if isinstance(layer, AdapterLayer)}
            present = [a for a in self.adapters if a in found]
            if not present:
                continue
            for adapter in present:
                layer = found[adapter]
                if not isinstance(layer, BottleneckLayer) or layer.parallel:
                    raise UserInputError(f"AdapterFusion fuses sequential bottleneck adapters (Houlsby, Pfeiffer); "
                                         f"adapter '{adapter}' is {type(layer).__name__}"
                                         f"{' (parallel)' if getattr(layer, 'parallel', False) else ''} — fuse "
                                         "bottleneck adapters only")
            if len(present) != len(self.adapters):
                missing = sorted(set(self.adapters) - set(present))
                raise UserInputError(f"AdapterFusion: adapters {present} sit at '{name}' but {missing} do not — fuse "
                                     "adapters of the same variant (the same places)")
            places.append((name, outermost, [found[a] for a in self.adapters]))
        if not places:
            raise UserInputError(f"AdapterFusion: this model has no adapters named {', '.join(self.adapters)} — "
                                 "add or load_adapter() them first")
        for name, outermost, fused in places:
            layer = FusionLayer(outermost, fused, self.temperature)
            layer.to(device=fused[0].up.weight.device)
            replace_module(model, name, layer)


def _chain(module: nn.Module) -> list[nn.Module]:
    """``module`` and every adapter layer it wraps, outermost first."""
    chain = [module]
    while isinstance(chain[-1], AdapterLayer) and getattr(chain[-1], "base_layer", None) is not None:
        chain.append(chain[-1].base_layer)
    return chain
