"""Many adapters on one frozen base: AdapterHub's verbs on `AdapterModule` (a mixin, so the module file stays small).

The module's own adapter is named ``default`` unless given a name (``AdapterModule(adapter_name=...)``): its
strategy, head and labels are the module's (``strategy``,
``head``, ``label_names``), so the single-adapter case, its checkpoints and its folders are unchanged. Each other
adapter has its own strategy, head and label set. An adapter added later wraps the places earlier ones already wrap
(the outermost layer); a switched-off layer computes exactly what it wraps, so an adapter's computation never changes
when others are added: its outputs are bit-identical (zero forgetting by construction, `tests/test_named_adapters.py`).

- `add_adapter(name, strategy, head, label_names)`: adds a frozen, inactive adapter (as AdapterHub's ``add_adapter``);
  ``AdapterModule(adapters={name: folder})`` loads earlier tasks' folders so, before its own (continual learning).
- `train_adapter(name | names)`: only those adapters and heads train; every other one is frozen and switched off.
- `set_active_adapters(spec)`: one name, several (a list or `Stack`: applied in the order they were added, the last
  one's head predicts), or `Parallel` (`lightning_adapters.mixed_batches`: each on the same input).
- `add_weighted_adapter(adapters, weights, name, combination_type)`: LoRA adapters merged into a new one
  (`strategies.lora_merge`); AdapterFusion is a strategy of its own (`strategies.fusion`).
- `delete_adapter(name)`, `adapter_names`, `head_of(name)`, `load_adapter(folder, name)` (in `checkpoint.py`: the
  folder format is the single-adapter one, weights named as the adapter has them alone on the base).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass

import torch
from torch import nn

from lightning_adapters import backbone as hf
from lightning_adapters.composition import Parallel, Stack
from lightning_adapters.errors import UserInputError, first_line
from lightning_adapters.heads import ClassificationHead, TaskHead
from lightning_adapters.strategies import Bottleneck, FullFineTuning, Lora, LoraLayer, Strategy
from lightning_adapters.strategies.base import (
    adapter_layers,
    adapter_named_parameters,
    adapter_state_dict,
    canonical_name,
    replace_module,
    set_active,
    tag_new_layers,
    trained_base_parameters,
)
from lightning_adapters.strategies.lora_merge import Combination, check_merge, combine

DEFAULT = "default"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


@dataclass
class Adapter:
    """What one named adapter is besides its layers: how it was built and what its head predicts."""

    strategy: Strategy
    label_names: list[str] | None


@dataclass
class TaskAdapter:
    """One more adapter an `AdapterModule` trains beside its own (``AdapterModule(tasks={name: TaskAdapter})``, a
    mapping in YAML): its strategy (default: a Pfeiffer bottleneck), head (default: classification) and labels
    (default: what the data gives for that task, ``task_labels``)."""

    strategy: Strategy | None = None
    head: TaskHead | None = None
    label_names: list[str] | None = None


class NamedAdapters:
    """AdapterHub's verbs for `AdapterModule` (which provides ``backbone``, ``head``, ``strategy``, ``label_names``,
    ``backbone_name``, the metric collections and ``_keep_trainable_fp32``)."""

    backbone: nn.Module
    head: TaskHead
    extra_heads: nn.ModuleDict

    def _init_named_adapters(self, own_name: str = DEFAULT) -> None:
        check_adapter_name(own_name)
        self.own_adapter = own_name  # the module's own adapter: strategy, head and label_names are its
        self.extra_heads = nn.ModuleDict()  # the heads of adapters added after the first (the module's own)
        self.extra_adapters: dict[str, Adapter] = {}
        self.frozen_adapters: set[str] = set()  # adapters whose weights stay frozen on purpose (not in checkpoints)
        self.active_adapters: list[str] = [own_name]
        self.parallel = False  # set_active_adapters(Parallel(...)): each active adapter on the same input

    def _load_earlier_adapters(self, folders: dict[str, str]) -> None:
        """`AdapterModule(adapters=...)`: earlier tasks' folders, loaded frozen and off (before the default's layers
        exist, so that those wrap outermost and keep the names they have alone on the base)."""
        if isinstance(self.strategy, FullFineTuning) and folders:
            raise UserInputError("full fine-tuning changes the base that the loaded adapters were trained on, so "
                                 "they would forget — train the new task with an adapter strategy (LoRA, IA3, ...)")
        for name, folder in folders.items():
            self.load_adapter(folder, name)

    def _apply_default_strategy(self) -> None:
        """Apply the module's own strategy (adapter `own_adapter`): active, and the one that trains."""
        before = {id(layer) for _, layer in adapter_layers(self.backbone)}
        try:
            self.strategy.apply(self.backbone)
        except UserInputError as err:
            if not self.extra_adapters:
                raise
            raise UserInputError(f"{first_line(err)} (this module also carries adapters "
                                 f"{', '.join(self.extra_adapters)})") from err
        tag_new_layers(self.backbone, before, self.own_adapter)
        set_active(self.backbone, set(self.active_adapters))

    def _add_task_adapters(self, tasks: dict[str, TaskAdapter], task_labels: dict[str, list[str]]) -> None:
        """`AdapterModule(tasks=...)`: each task's adapter added, then all of them trained with the module's own (for
        mixed-task batches)."""
        for name, task in tasks.items():
            labels = task.label_names if task.label_names is not None else task_labels.get(name)
            self.add_adapter(name, task.strategy or Bottleneck(), task.head, labels)
        self.train_adapter([self.own_adapter, *tasks])

    @property
    def trained_adapters(self) -> list[str]:
        """The adapters whose weights train (and are checkpointed and exported)."""
        return [name for name in self.adapter_names if name not in self.frozen_adapters]

    def init_adapter_from(self, name: str) -> None:
        """Start the module's own adapter's weights from adapter ``name``'s (same strategy settings): transfer from an
        earlier task. Its head is not copied: the tasks' label sets differ."""
        self._check_known(name)
        if name == self.own_adapter:
            raise UserInputError(f"init_from names the adapter to copy from, not '{name}' (this module's own) — name "
                                 "one of adapters")
        source, target = self.strategy_of(name).hparams(), self.strategy.hparams()
        if source != target:
            raise UserInputError(f"init_from: adapter '{name}' is {_describe(source)}, this module trains "
                                 f"{_describe(target)} — use the same strategy settings to start from it")
        weights = adapter_state_dict(self.backbone, name)
        own = dict(canonical_named_parameters(self.backbone, self.own_adapter))
        if set(weights) != set(own) or any(weights[k].shape != own[k].shape for k in own):
            raise UserInputError(f"init_from: adapter '{name}' has other weights than this module's adapter — "
                                 "use the same strategy settings to start from it")
        with torch.no_grad():
            for key, param in own.items():
                param.copy_(weights[key])

    # ---- what there is ---------------------------------------------------------------------------------------
    @property
    def adapter_names(self) -> list[str]:
        return [self.own_adapter, *self.extra_adapters]

    @property
    def task_head(self) -> TaskHead:
        """The head outputs come from: the last active adapter's."""
        return self.head_of(self.active_adapters[-1])

    def head_of(self, name: str) -> TaskHead:
        self._check_known(name)
        return self.head if name == self.own_adapter else self.extra_heads[name]

    def labels_of(self, name: str) -> list[str] | None:
        self._check_known(name)
        return self.label_names if name == self.own_adapter else self.extra_adapters[name].label_names

    def strategy_of(self, name: str) -> Strategy:
        self._check_known(name)
        return self.strategy if name == self.own_adapter else self.extra_adapters[name].strategy

    def _check_known(self, name: str) -> None:
        if name not in self.adapter_names:
            raise UserInputError(f"no adapter named '{name}' — this module has {', '.join(self.adapter_names)}")

    # ---- the verbs -------------------------------------------------------------------------------------------
    def add_adapter(self, name: str, strategy: Strategy, head: TaskHead | None = None,
                    label_names: list[str] | None = None) -> None:
        """Add adapter ``name`` (frozen and switched off until `train_adapter` or `set_active_adapters`)."""
        check_adapter_name(name)
        if name in self.adapter_names:
            raise UserInputError(f"an adapter named '{name}' already exists — pick another name or delete_adapter() "
                                 "it first")
        if label_names is not None and len(set(label_names)) != len(label_names):
            raise UserInputError(f"label_names of adapter '{name}' repeat a label — each label must appear once")
        if isinstance(strategy, FullFineTuning):
            raise UserInputError("named adapters need a strategy with its own weights, not FullFineTuning — use "
                                 "LoRA, IA3, a bottleneck, prompt or prefix tuning")
        head = head if head is not None else ClassificationHead()
        if type(head).auto_class is not type(self.head).auto_class:  # e.g. a generation head on a bare encoder
            raise UserInputError(f"{type(head).__name__} needs the base loaded as {type(head).auto_class.__name__}, "
                                 f"but this module's base is loaded as {type(self.head).auto_class.__name__} for "
                                 f"{type(self.head).__name__} — train that task in an AdapterModule of its own")
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

    def train_adapter(self, names: str | list[str]) -> None:
        """Train only adapter ``names`` (one, or several for mixed-task batches) and their heads: every other adapter
        and head is frozen and switched off."""
        names = _as_list(names, "train_adapter")
        self._check_switchable(names)
        for other in self.adapter_names:
            self._freeze(other, other not in names)
        self.frozen_adapters = set(self.adapter_names) - set(names)
        self.set_active_adapters(names)

    def add_weighted_adapter(self, adapters: list[str], weights: list[float] | None = None,
                             adapter_name: str = "merged", combination_type: Combination = "linear",
                             density: float | None = None, rank: int | None = None) -> None:
        """Add adapter ``adapter_name``: the LoRA adapters ``adapters`` merged (PEFT's verb). ``linear``: the exact
        weighted sum of their updates (default weights: equal, summing to 1 — the average); ``ties``: TIES-merging
        with ``density`` (default 0.2), stored at ``rank`` (`strategies.lora_merge`). Its head and labels start as
        a copy of the first adapter's; like any added adapter it is frozen and switched off."""
        weights = check_merge(list(adapters), weights, combination_type, density, rank)
        places: list[dict[str, LoraLayer]] = []
        for name in adapters:
            self._check_known(name)
            layers = {canonical_name(path): layer for path, layer in adapter_layers(self.backbone)
                      if layer.adapter_name == name and isinstance(layer, LoraLayer)}
            if not layers or not isinstance(self.strategy_of(name), Lora):
                raise UserInputError(f"adapter '{name}' is {type(self.strategy_of(name)).__name__}, not LoRA — only "
                                     "LoRA adapters merge into a new one")
            if any(layer.merged for layer in layers.values()):
                raise UserInputError(f"adapter '{name}' is merged into the base weights — unmerge_adapters() first")
            places.append(layers)
        if any(set(layers) != set(places[0]) for layers in places):
            raise UserInputError(f"adapters {', '.join(adapters)} adapt different layers — merge LoRA adapters "
                                 "with the same target_modules")
        merged = {path: combine([(layers[path].lora_A.weight, layers[path].lora_B.weight, layers[path].scaling)
                                 for layers in places], weights, combination_type, density, rank)
                  for path in places[0]}
        width = next(iter(merged.values()))[0].shape[0]
        source = self.head_of(adapters[0])
        self.add_adapter(adapter_name, Lora(r=width, alpha=width, target_modules=sorted(merged)),
                         copy.deepcopy(source), self.labels_of(adapters[0]))
        with torch.no_grad():
            self.head_of(adapter_name).load_state_dict(source.state_dict())
            for path, layer in adapter_layers(self.backbone):
                if layer.adapter_name == adapter_name:
                    a, b = merged[canonical_name(path)]
                    layer.lora_A.weight.copy_(a)
                    layer.lora_B.weight.copy_(b)

    def _check_switchable(self, names: list[str]) -> None:
        """Raise unless every name is an adapter and every other adapter can be switched off."""
        for name in names:
            self._check_known(name)
        merged = [layer.adapter_name for _, layer in adapter_layers(self.backbone)
                  if getattr(layer, "merged", False) and layer.adapter_name not in names]
        if merged:
            raise UserInputError(f"adapter '{merged[0]}' is merged into the base weights, so it cannot be switched "
                                 "off — unmerge_adapters() first")

    def set_active_adapters(self, names: str | list[str] | Stack | Parallel) -> None:
        """Switch on ``names`` and off the rest: one name; several (a list or `Stack`: applied in the order they were
        added, outputs from the last one's head); or `Parallel` (each on the same input, outputs ``{name: ...}``)."""
        self.parallel = isinstance(names, Parallel)
        if isinstance(names, Stack):
            order = [n for n in self.adapter_names if n in names]
            if list(names) != order and set(names) <= set(order):
                raise UserInputError(f"{names!r}: adapters apply in the order they were added, here "
                                     f"{', '.join(order)} — write Stack({', '.join(map(repr, order))})")
        names = _as_list(names, "set_active_adapters")
        self._check_switchable(names)
        set_active(self.backbone, set(names) if not self.parallel else set())
        self.active_adapters = names
        head = self.task_head
        self.val_metrics = head.metrics().clone(prefix="val_")
        self.test_metrics = head.metrics().clone(prefix="test_")

    def delete_adapter(self, name: str) -> None:
        """Remove adapter ``name``: its layers are unwrapped, its head dropped."""
        self._check_known(name)
        if name == self.own_adapter:
            raise UserInputError(f"adapter '{name}' is the module's own and cannot be deleted — build a new "
                                 "AdapterModule, or keep it switched off with set_active_adapters()")
        users = sorted({layer.adapter_name for _, layer in adapter_layers(self.backbone)
                        if name in [f.adapter_name for f in getattr(layer, "fused", [])]})
        if users:
            raise UserInputError(f"adapter '{name}' is fused by adapter '{users[0]}' — delete_adapter('{users[0]}') "
                                 "first")
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
            self.set_active_adapters([n for n in self.active_adapters if n != name] or self.own_adapter)

    def _freeze(self, name: str, frozen: bool) -> None:
        for _, param in adapter_named_parameters(self.backbone, name):
            param.requires_grad_(not frozen)
        for param in self.head_of(name).parameters():
            param.requires_grad_(not frozen)

    def check_earlier_adapters_kept(self) -> None:
        """Refuse training base weights while frozen adapters depend on them: their outputs would change."""
        trained = [name for name, _ in trained_base_parameters(self.backbone)]
        if self.frozen_adapters and trained:
            raise UserInputError(f"{len(trained)} base weights train (e.g. '{trained[0]}'), which would change the "
                                 f"outputs of the frozen adapters {', '.join(sorted(self.frozen_adapters))} — freeze "
                                 "the base, or train without them")

    def frozen_weights_that_should_train(self) -> list[str]:
        """Adapter or head weights that are frozen although their adapter is not frozen on purpose."""
        frozen = [f"backbone.{path}.{name}" for path, layer in adapter_layers(self.backbone)
                  if layer.adapter_name not in self.frozen_adapters
                  for name, param in layer.adapter_named_parameters() if not param.requires_grad]
        for adapter in self.adapter_names:
            if adapter not in self.frozen_adapters:
                prefix = "head." if adapter == self.own_adapter else f"extra_heads.{adapter}."
                frozen += [prefix + name for name, p in self.head_of(adapter).named_parameters() if not p.requires_grad]
        return frozen



def check_adapter_name(name: str) -> None:
    """Names appear in metric names, batch keys and folder names: one word."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise UserInputError(f"adapter name {name!r} must be a word (letters, digits, _ or -, not starting with a "
                             "digit) — e.g. 'sentiment'")


def canonical_named_parameters(model: nn.Module, adapter: str):
    """Adapter ``adapter``'s parameters by canonical path (`canonical_name`)."""
    return ((canonical_name(name), param) for name, param in adapter_named_parameters(model, adapter))


def _describe(config: dict) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in config.get("init_args", {}).items())
    return f"{config['class_path'].rpartition('.')[2]}({args})"


def _as_list(names: str | list[str], verb: str) -> list[str]:
    names = [names] if isinstance(names, str) else list(names)
    if not names:
        raise UserInputError(f"{verb} needs at least one adapter name")
    return names
