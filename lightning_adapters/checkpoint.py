"""Adapter folders: the portable, pickle-free form of a trained adapter.

``adapter_model.safetensors`` holds the trainable weights (adapter + head); ``adapter_config.json`` holds what is
needed to rebuild the module on a fresh copy of the base model: strategy and head configs, label names and the base
model's identity, which is checked before any weight is loaded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lightning_adapters.atomic import atomic_write
from lightning_adapters.backbone import check_fingerprint
from lightning_adapters.errors import UserInputError
from lightning_adapters.heads import TaskHead
from lightning_adapters.module import AdapterModule
from lightning_adapters.strategies import Strategy
from lightning_adapters.strategies.base import build_from_config

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
FORMAT = "lightning-adapters/1"


def save_adapter(module: AdapterModule, folder: str | os.PathLike) -> Path:
    """Write the adapter folder; each file is written to a temporary name first, so a crash leaves no half file."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    strategy_config, adapter = module.strategy.export_state(module.backbone)
    state = {f"backbone.{name}": tensor for name, tensor in adapter.items()}
    # parameters, not state_dict(): under FSDP2 state_dict() hands out shards even inside module.full_weights()
    state.update({f"head.{name}": param for name, param in module.head.named_parameters()})
    config = {
        "format": FORMAT,
        "backbone": module.backbone_name,
        "dtype": module.dtype_name,
        "strategy": strategy_config,
        "head": module.head.hparams(),
        "label_names": module.label_names,
        "base_model": module.base_fingerprint,
    }
    weights = {name: tensor.detach().float().contiguous().cpu() for name, tensor in state.items()}
    atomic_write(folder / WEIGHTS_NAME, lambda path: save_file(weights, path, metadata={"format": FORMAT}))
    atomic_write(folder / CONFIG_NAME, lambda path: Path(path).write_text(json.dumps(config, indent=2) + "\n"))
    return folder


def read_adapter_config(folder: str | os.PathLike) -> dict:
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise UserInputError(f"no {CONFIG_NAME} in '{folder}' — pass a folder written by save_adapter()")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserInputError(f"'{path}' is not valid JSON ({err}) — the adapter folder is corrupt") from err
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise UserInputError(f"'{path}' is not a {FORMAT} adapter config — pass a folder written by save_adapter()")
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


def load_adapter(folder: str | os.PathLike, backbone: str | None = None, dtype: str | None = None) -> AdapterModule:
    """Rebuild a trained `AdapterModule` from an adapter folder onto a fresh base model.

    Args:
        folder: a folder written by `save_adapter`.
        backbone: the base model to load (default: the one recorded in the folder); it must be the same model.
        dtype: dtype of the frozen base (default: the recorded one).
    """
    config = read_adapter_config(folder)
    return AdapterModule(
        backbone=backbone or config["backbone"],
        strategy=build_from_config(config["strategy"], Strategy, "strategy"),
        head=build_from_config(config["head"], TaskHead, "head"),
        label_names=config["label_names"],
        dtype=dtype if dtype is not None else config.get("dtype"),
        adapter=str(folder),
    )


def apply_adapter(module: AdapterModule, folder: str | os.PathLike) -> None:
    """Load an adapter folder's weights into ``module`` after checking base model, label names and weight names."""
    config = read_adapter_config(folder)
    weights = read_adapter_weights(folder)
    check_fingerprint(config["base_model"], module.base_fingerprint, f"adapter '{folder}'")
    if config.get("label_names") != module.label_names:
        raise UserInputError(f"adapter '{folder}' was trained with labels {config.get('label_names')}, this model "
                             f"has {module.label_names} — use the same label names in the same order")
    module.check_trainable_state(weights, f"adapter '{folder}'")
    module.load_state_dict(weights, strict=False)
