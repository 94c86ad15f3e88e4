"""Many adapters on one frozen base: AdapterHub's verbs on `AdapterModule` (a mixin, so the module file stays small).

The module's first adapter is named ``default``: its strategy, head and labels are the module's own (``strategy``,
``head``, ``label_names``), so the single-adapter case, its checkpoints and its folders are unchanged. Each adapter
added later has its own strategy, head and label set. A new adapter wraps the places earlier ones already wrap (the
outermost layer), so an earlier adapter's computation never changes: with the others switched off, its outputs are
bit-identical to what they were (zero forgetting by construction, `tests/test_named_adapters.py`).

- `add_adapter(name, strategy, head, label_names)`: adds a frozen, inactive adapter (as AdapterHub's ``add_adapter``).
- `train_adapter(name)`: only that adapter and its head train; every other adapter is frozen and switched off.
- `set_active_adapters(names)`: which adapters run; where several wrap one place they apply in the order they were
  added (a stack); the head used is the last name's.
- `delete_adapter(name)`, `adapter_names`, `head_of(name)`, `load_adapter(folder, name)` (in `checkpoint.py`: the
  folder format is the single-adapter one, weights named as the adapter has them alone on the base).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from lightning_adapters import backbone as hf
from lightning_adapters.errors import UserInputError
from lightning_adapters.heads import ClassificationHead, TaskHead
from lightning_adapters.strategies import FullFineTuning, Strategy
from lightning_adapters.strategies.base import (
    adapter_layers,
    adapter_named_parameters,
    replace_module,
    set_active,
    tag_new_layers,
)

DEFAULT = "default"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


@dataclass
class Adapter:
    """What one named adapter is besides its layers: how it was built and what its head predicts."""

    strategy: Strategy
    label_names: list[str] | None


class NamedAdapters:
    """AdapterHub's verbs for `AdapterModule` (which provides ``backbone``, ``head``, ``strategy``, ``label_names``,
    ``backbone_name``, the metric collections and ``_keep_trainable_fp32``)."""

    backbone: nn.Module
    head: TaskHead
    extra_heads: nn.ModuleDict

    def _init_named_adapters(self) -> None:
        self.extra_heads = nn.ModuleDict()  # the heads of adapters added after the first (``default``)
        self.extra_adapters: dict[str, Adapter] = {}
        self.frozen_adapters: set[str] = set()  # adapters whose weights stay frozen on purpose (not in checkpoints)
        self.active_adapters: list[str] = [DEFAULT]
        tag_new_layers(self.backbone, set(), DEFAULT)

    # ---- what there is ---------------------------------------------------------------------------------------
    @property
    def adapter_names(self) -> list[str]:
        return [DEFAULT, *self.extra_adapters]

    @property
    def task_head(self) -> TaskHead:
        """The head outputs come from: the last active adapter's."""
        return self.head_of(self.active_adapters[-1])

    def head_of(self, name: str) -> TaskHead:
        self._check_known(name)
        return self.head if name == DEFAULT else self.extra_heads[name]

    def labels_of(self, name: str) -> list[str] | None:
        self._check_known(name)
        return self.label_names if name == DEFAULT else self.extra_adapters[name].label_names

    def strategy_of(self, name: str) -> Strategy:
        self._check_known(name)
        return self.strategy if name == DEFAULT else self.extra_adapters[name].strategy

    def _check_known(self, name: str) -> None:
        if name not in self.adapter_names:
            raise UserInputError(f"no adapter named '{name}' — this module has {', '.join(self.adapter_names)}")

    # ---- the verbs -------------------------------------------------------------------------------------------
    def add_adapter(self, name: str, strategy: Strategy, head: TaskHead | None = None,
                    label_names: list[str] | None = None) -> None:
        """Add adapter ``name`` (frozen and switched off until `train_adapter` or `set_active_adapters`)."""
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise UserInputError(f"adapter name {name!r} must be a word (letters, digits, _ or -, not starting with a "
                                 "digit) — e.g. 'sentiment'")
        if name in self.adapter_names:
            raise UserInputError(f"an adapter named '{name}' already exists — pick another name or delete_adapter() "
                                 "it first")
        if label_names is not None and len(set(label_names)) != len(label_names):
            raise UserInputError(f"label_names of adapter '{name}' repeat a label — each label must appear once")
        if isinstance(strategy, FullFineTuning):
            raise UserInputError("named adapters need a strategy with its own weights, not FullFineTuning — use "
                                 "LoRA, IA3, a bottleneck, prompt or prefix tuning")
        head = head if head is not None else ClassificationHead()
        tokenizer = hf.load_tokenizer(self.backbone_name) if head.uses_tokenizer else None
        head.build(self.backbone.config, list(label_names) if label_names else None, tokenizer)  # may refuse: first
        before = {id(layer) for _, layer in adapter_layers(self.backbone)}
        strategy.apply(self.backbone)  # a strategy that cannot go on this base refuses here, nothing added yet
        tag_new_layers(self.backbone, before, name)
        self.extra_heads[name] = head
        self.extra_adapters[name] = Adapter(strategy, list(label_names) if label_names else None)
        self.frozen_adapters.add(name)
        self._freeze(name, True)
        set_active(self.backbone, set(self.active_adapters))
        self._keep_trainable_fp32()

    def train_adapter(self, name: str) -> None:
        """Train only adapter ``name`` and its head: every other adapter and head is frozen and switched off."""
        self._check_known(name)
        for other in self.adapter_names:
            self._freeze(other, other != name)
        self.frozen_adapters = set(self.adapter_names) - {name}
        self.set_active_adapters(name)

    def set_active_adapters(self, names: str | list[str]) -> None:
        """Switch on ``names`` (one name, or several that then apply in the order they were added) and off the rest;
        outputs come from the last name's head."""
        names = [names] if isinstance(names, str) else list(names)
        if not names:
            raise UserInputError("set_active_adapters needs at least one adapter name")
        for name in names:
            self._check_known(name)
        merged = [layer.adapter_name for _, layer in adapter_layers(self.backbone)
                  if getattr(layer, "merged", False) and layer.adapter_name not in names]
        if merged:
            raise UserInputError(f"adapter '{merged[0]}' is merged into the base weights, so it cannot be switched "
                                 "off — unmerge_adapters() first")
        set_active(self.backbone, set(names))
        self.active_adapters = names
        head = self.task_head
        self.val_metrics = head.metrics().clone(prefix="val_")
        self.test_metrics = head.metrics().clone(prefix="test_")

    def delete_adapter(self, name: str) -> None:
        """Remove adapter ``name``: its layers are unwrapped, its head dropped."""
        self._check_known(name)
        if name == DEFAULT:
            raise UserInputError("the default adapter is the module's own and cannot be deleted — build a new "
                                 "AdapterModule, or keep it switched off with set_active_adapters()")
        layers = [(path, layer) for path, layer in adapter_layers(self.backbone) if layer.adapter_name == name]
        if any(getattr(layer, "base_layer", None) is None for _, layer in layers):
            raise UserInputError(f"adapter '{name}' works through model hooks (prompt or prefix tuning), which cannot "
                                 "be taken out yet — switch it off with set_active_adapters()")
        for path, layer in sorted(layers, key=lambda item: -len(item[0])):  # inner wrappers first
            replace_module(self.backbone, path, layer.base_layer)
        del self.extra_heads[name]
        del self.extra_adapters[name]
        self.frozen_adapters.discard(name)
        if name in self.active_adapters:
            self.set_active_adapters([n for n in self.active_adapters if n != name] or DEFAULT)

    def _freeze(self, name: str, frozen: bool) -> None:
        for _, param in adapter_named_parameters(self.backbone, name):
            param.requires_grad_(not frozen)
        for param in self.head_of(name).parameters():
            param.requires_grad_(not frozen)

    def frozen_weights_that_should_train(self) -> list[str]:
        """Adapter or head weights that are frozen although their adapter is not frozen on purpose."""
        frozen = [f"backbone.{path}.{name}" for path, layer in adapter_layers(self.backbone)
                  if layer.adapter_name not in self.frozen_adapters
                  for name, param in layer.adapter_named_parameters() if not param.requires_grad]
        for adapter in self.adapter_names:
            if adapter not in self.frozen_adapters:
                prefix = "head." if adapter == DEFAULT else f"extra_heads.{adapter}."
                frozen += [prefix + name for name, p in self.head_of(adapter).named_parameters() if not p.requires_grad]
        return frozen

