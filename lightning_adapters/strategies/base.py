"""The strategy protocol and the free functions every strategy shares.

A *strategy* turns a frozen Hugging Face model into a trainable one by injecting small modules. Everything generic
lives here, once: matching target names (PEFT's semantics), replacing a submodule, finding adapter weights *by
structure* (the `AdapterLayer` marker class, never name substrings) and the config a strategy is saved as
(`lightning_adapters.registry` builds it back, from known classes only). Each method (bottleneck, LoRA, ...) is one
small file next to this one.
"""

from __future__ import annotations

import inspect
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import ClassVar

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D


class AdapterLayer(nn.Module):
    """Marker base class: a module whose own parameters are adapter weights.

    A layer that wraps a frozen module keeps it as ``base_layer`` (as PEFT does); everything else it owns is trainable
    and saved with the adapter.
    """

    base_layer: nn.Module | None  # annotation only: a class attribute would shadow the registered submodule
    adapter_name: str = "default"  # which named adapter this layer belongs to (`tag_new_layers`)
    active: bool = True  # inactive: the layer computes exactly what the model did without it (`set_active`)

    @property
    def weight(self) -> torch.Tensor:
        # Some models read the projection's weight directly (T5 checks `wo.weight.dtype`): expose the base one.
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    def adapter_named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        for name, param in self.named_parameters():
            if not name.startswith("base_layer."):
                yield name, param


class Strategy(ABC):
    """How a frozen model is made trainable. Subclasses store every ``__init__`` argument under the same name.

    What trains is decided once, by ``requires_grad`` after `apply` (see `AdapterModule.trainable_names`): a strategy
    makes exactly the weights it trains require grad, and everything else stays frozen.
    """

    peft_type: ClassVar[str | None] = None
    """The Hugging Face PEFT format this class exports to (``"LORA"``...; `lightning_adapters.peft_export`), or None.
    Read from the class itself, never inherited (`declared_peft_type`): a subclass may hold weights its parent's
    format has no place for, so it exports only once it declares a format of its own."""

    @abstractmethod
    def apply(self, model: nn.Module) -> None:
        """Inject adapter layers into ``model`` in place (or unfreeze what trains); the base is already frozen."""

    def hparams(self) -> dict:
        """``{"class_path", "init_args"}`` — enough to rebuild this strategy (`registry.build_from_config`)."""
        return class_config(self)

    def export_state(self, model: nn.Module, adapter: str | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
        """(config, adapter-layer weights) an export writes — of named ``adapter`` only, canonically named, when
        given; strategies with a training-only form (e.g. prefix tuning's reparameterisation MLP) return the folded
        inference form here. Trained weights outside adapter layers are added by `export_weights`."""
        return self.hparams(), adapter_state_dict(model, adapter)


def declared_peft_type(strategy: Strategy) -> str | None:
    """The PEFT format ``type(strategy)`` itself declares: looked up on that exact class, not its parents."""
    return vars(type(strategy)).get("peft_type")


def export_weights(strategy: Strategy, model: nn.Module,
                   adapter: str | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config, weights) an adapter export of ``model`` holds: the strategy's adapter-layer weights in their inference
    form, plus every other trainable weight as it is (a LayerNorm the user unfroze, full fine-tuning's whole base),
    so that every weight the optimizer updates is exported."""
    config, state = strategy.export_state(model, adapter)
    return config, {**state, **{name: param.detach() for name, param in trained_base_parameters(model)}}


def trained_base_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """The trainable parameters of ``model`` outside adapter layers: base weights a strategy or the user unfroze."""
    adapter = {id(param) for _, param in adapter_named_parameters(model)}
    for name, param in model.named_parameters():
        if param.requires_grad and id(param) not in adapter:
            yield name, param


def class_path(cls: type) -> str:
    """The dotted path a config names ``cls`` by (what `lightning_adapters.registry` looks classes up with)."""
    return f"{cls.__module__}.{cls.__qualname__}"


def class_config(obj: object) -> dict:
    """The jsonargparse-style config of ``obj``: its class path and the constructor arguments it stored."""
    names = [n for n in inspect.signature(type(obj).__init__).parameters if n != "self"]
    return {"class_path": class_path(type(obj)), "init_args": {name: getattr(obj, name) for name in names}}


def match_target(name: str, targets: str | list[str]) -> bool:
    """PEFT's target semantics: a string is a regex that must match the whole name; a list matches a name exactly
    or as a ``.suffix``."""
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def find_modules(model: nn.Module, targets: str | list[str]) -> list[str]:
    """Names of the Linear places in ``model`` (`linear_places`) that match ``targets``."""
    return [name for name, _ in linear_places(model) if match_target(name, targets)]


def is_linear(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, Conv1D))


def innermost(module: nn.Module) -> nn.Module:
    """The module at the bottom of a chain of wrapping adapter layers (itself when it wraps nothing)."""
    while isinstance(module, AdapterLayer) and getattr(module, "base_layer", None) is not None:
        module = module.base_layer
    return module


def linear_places(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Every place that holds a Linear or Conv1D of the base model: the layer itself, or the outermost adapter layer
    wrapping it, named by the layer's original path. Modules inside adapter layers (their own Linears, the wrapped
    base) are not places: a further adapter at that place wraps the outermost layer."""
    inside: tuple[str, ...] = ()
    for name, module in model.named_modules():  # pre-order: a wrapper comes before what it holds
        if inside and name.startswith(inside):
            continue
        if isinstance(module, AdapterLayer):
            inside += (f"{name}.",)
            if is_linear(innermost(module)):
                yield name, module
        elif is_linear(module):
            yield name, module


def linear_features(module: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of a Linear or of GPT-2's transposed Conv1D (or of the one adapters wrap)."""
    module = innermost(module)
    if isinstance(module, Conv1D):
        return module.weight.shape[0], module.nf
    return module.in_features, module.out_features


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def adapter_layers(model: nn.Module) -> Iterator[tuple[str, AdapterLayer]]:
    for name, module in model.named_modules():
        if isinstance(module, AdapterLayer):
            yield name, module


def adapter_named_parameters(model: nn.Module, adapter: str | None = None) -> Iterator[tuple[str, nn.Parameter]]:
    """Every adapter weight in ``model`` (or only named ``adapter``'s), named by its full path, found by structure."""
    for layer_name, layer in adapter_layers(model):
        if adapter is None or layer.adapter_name == adapter:
            for name, param in layer.adapter_named_parameters():
                yield f"{layer_name}.{name}" if layer_name else name, param


def adapter_state_dict(model: nn.Module, adapter: str | None = None) -> dict[str, torch.Tensor]:
    """Adapter weights by path. For one named ``adapter``, paths are canonical (`canonical_name`): what the same
    adapter has alone on the model, whatever other adapters wrap the same places."""
    if adapter is None:
        return {name: param.detach() for name, param in adapter_named_parameters(model)}
    return {canonical_name(name): param.detach() for name, param in adapter_named_parameters(model, adapter)}


_WRAPPED = re.compile(r"(?:\.base_layer)+(?=\.|$)")  # one step per adapter added later at the same place


def canonical_name(path: str) -> str:
    """``path`` without the ``base_layer`` steps that adapters added later at the same place put in front of it."""
    return _WRAPPED.sub("", path)


def tag_new_layers(model: nn.Module, before: set[int], adapter: str) -> list[AdapterLayer]:
    """Name the adapter layers of ``model`` that are not in ``before`` (ids) after ``adapter``; returns them."""
    new = [layer for _, layer in adapter_layers(model) if id(layer) not in before]
    for layer in new:
        layer.adapter_name = adapter
    return new


def set_active(model: nn.Module, adapters: set[str] | None) -> None:
    """Switch every adapter layer on (its adapter in ``adapters``; ``None``: all) or off."""
    for _, layer in adapter_layers(model):
        layer.active = adapters is None or layer.adapter_name in adapters
