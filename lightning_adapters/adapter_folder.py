"""Adapter folders: the portable, pickle-free form of a trained adapter.

``adapter_model.safetensors`` holds the trainable weights (adapter + head); ``adapter_config.json`` holds what is
needed to rebuild the module on a fresh copy of the base model: strategy and head configs, label names and the base
model's identity, which is checked before any weight is loaded; ``README.md`` is the model card. The folder changes
as a whole (`replace_folder`): a failed save leaves the previous adapter as it was. Loading builds only classes it
knows (`lightning_adapters.registry`): a folder never makes us import a module it names. `load_adapter`, which builds
a module from a folder, is in module.py; this file only reads, checks and writes folders.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lightning_adapters.atomic import interrupted_save, replace_folder
from lightning_adapters.base_fingerprint import check_fingerprint
from lightning_adapters.errors import UserInputError
from lightning_adapters.heads import TaskHead
from lightning_adapters.model_card import CARD_NAME, model_card
from lightning_adapters.registry import build_from_config, fits, kind_name
from lightning_adapters.strategies import Strategy, adapter_named_parameters
from lightning_adapters.strategies.base import canonical_name

if TYPE_CHECKING:  # the module imports this file; `load_adapter`, which builds one, lives in module.py
    from lightning_adapters.module import AdapterModule

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
FORMAT = "lightning-adapters/1"
ADAPTER_FILES = {CONFIG_NAME, WEIGHTS_NAME, CARD_NAME}  # all an existing folder may hold to be replaced
_REQUIRED = ("backbone", "strategy", "head", "base_model")
_KINDS = {"backbone": str, "strategy": dict, "head": dict, "base_model": dict, "label_names": list[str] | None,
          "dtype": str | None}


def save_adapter(module: AdapterModule, folder: str | os.PathLike, card: dict | None = None,
                 name: str | None = None) -> Path:
    """Write one adapter's folder: weights, config and model card, replacing an existing one as a whole.

    Args:
        module: the trained module.
        folder: the folder, created if needed; an existing one may hold only an adapter folder's files.
        card: optional model-card fields: ``data``, ``license``, ``command`` (strings), ``metrics`` (name -> value).
        name: which of the module's adapters (`AdapterModule.adapter_names`; default: the module's own); the folder
            is the same as that adapter alone on the base would write.
    """
    name = module.own_adapter if name is None else name
    strategy_config, state = module.export_weights(name)
    config = {
        "format": FORMAT,
        "backbone": module.backbone_name,  # as given: an alias stays an alias, not this machine's install path
        "dtype": module.dtype_name,
        "strategy": strategy_config,
        "head": module.head_of(name).hparams(),
        "label_names": module.labels_of(name),
        "base_model": module.base_fingerprint,
    }
    weights = {key: tensor.detach().float().contiguous().cpu() for key, tensor in state.items()}
    text = model_card(module, module.backbone_name, strategy_config, card)  # a bad card field: nothing written

    def write(tmp: Path) -> None:
        save_file(weights, tmp / WEIGHTS_NAME, metadata={"format": FORMAT})
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        (tmp / CARD_NAME).write_text(text)

    return replace_folder(folder, write, ADAPTER_FILES)


def read_json(path: Path, fix: str) -> Any:
    """Parse a JSON file from an adapter folder; malformed or absurdly nested JSON is one line naming ``fix``."""
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserInputError(f"'{path}' is not valid JSON ({err}) — {fix}") from err
    except RecursionError as err:  # the parser recurses once per nesting level
        raise UserInputError(f"'{path}' nests too deeply to be an adapter config — {fix}") from err


def read_adapter_config(folder: str | os.PathLike) -> dict:
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        aside = interrupted_save(folder)
        fix = (f"an interrupted save left the previous adapter in '{aside}': rename it to '{folder}'" if aside
               else "pass a folder written by save_adapter()")
        raise UserInputError(f"no {CONFIG_NAME} in '{folder}' — {fix}")
    config = read_json(path, "the adapter folder is corrupt; save the adapter again")
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise UserInputError(f"'{path}' is not a {FORMAT} adapter config — pass a folder written by save_adapter()")
    missing = [key for key in _REQUIRED if key not in config]
    if missing:
        raise UserInputError(f"'{path}' has no {', '.join(missing)} — the adapter folder is corrupt; save the "
                             "adapter again")
    wrong = [key for key, kind in _KINDS.items() if key in config and not fits(config[key], kind)]
    if wrong:
        raise UserInputError(f"'{path}': {wrong[0]} should be {kind_name(_KINDS[wrong[0]])}, not "
                             f"{type(config[wrong[0]]).__name__} — the adapter folder is corrupt; save it again")
    return config


def read_adapter_weights(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(folder) / WEIGHTS_NAME
    if not path.is_file():
        raise UserInputError(f"no {WEIGHTS_NAME} in '{folder}' — the adapter folder is incomplete")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise UserInputError(f"'{path}' is not a readable safetensors file ({err}) — the adapter file is "
                             "corrupt; export it again") from err


def apply_adapter(module: AdapterModule, folder: str | os.PathLike) -> None:
    """Load an adapter folder's weights into ``module`` after checking base model, label names and weight names."""
    config = read_adapter_config(folder)
    weights = read_adapter_weights(folder)
    check_fingerprint(config["base_model"], module.base_fingerprint, f"adapter '{folder}'")
    if config.get("label_names") != module.label_names:
        raise UserInputError(f"adapter '{folder}' was trained with labels {config.get('label_names')}, this model "
                             f"has {module.label_names} — use the same label names in the same order")
    module.train_saved_weights(weights)  # base weights a folder holds were trained: train them again
    module.check_trainable_state(weights, f"adapter '{folder}'")
    module.load_state_dict(weights, strict=False)


def add_saved_adapter(module: AdapterModule, folder: str | os.PathLike, name: str,
                      allowed_classes: Iterable[type] = ()) -> None:
    """`AdapterModule.load_adapter`: add a saved adapter to ``module`` under ``name``; on any mismatch nothing is
    added."""
    config = read_adapter_config(folder)
    weights = read_adapter_weights(folder)
    check_fingerprint(config["base_model"], module.base_fingerprint, f"adapter '{folder}'")
    allowed = list(allowed_classes)
    strategy = build_from_config(config["strategy"], Strategy, "strategy", allowed)
    head = build_from_config(config["head"], TaskHead, "head", allowed)
    module.add_adapter(name, strategy, head, config.get("label_names"))
    try:
        _load_named(module, name, weights, f"adapter '{folder}'")
    except BaseException:
        module.delete_adapter(name)
        raise


def _load_named(module: AdapterModule, name: str, weights: dict[str, torch.Tensor], where: str) -> None:
    """Copy a folder's weights (single-adapter names) into adapter ``name``'s layers and head, all checked first."""
    targets = {f"backbone.{canonical_name(path)}": param for path, param in adapter_named_parameters(module.backbone,
                                                                                                      name)}
    targets.update({f"head.{path}": param for path, param in module.head_of(name).named_parameters()})
    missing, unexpected = sorted(set(targets) - set(weights)), sorted(set(weights) - set(targets))
    if missing or unexpected:
        raise UserInputError(f"{where} does not match its own config: {len(missing)} missing weights (e.g. "
                             f"{missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]}) — save it again")
    for key, param in targets.items():
        value = weights[key]
        if tuple(value.shape) != tuple(param.shape) or not value.is_floating_point():
            raise UserInputError(f"{where}: weight '{key}' is {value.dtype} {tuple(value.shape)}, the adapter needs "
                                 f"floating-point {tuple(param.shape)} — the folder is damaged; save it again")
    with torch.no_grad():
        for key, param in targets.items():
            param.copy_(weights[key])
