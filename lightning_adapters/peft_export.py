"""Export LoRA and IA3 adapters to Hugging Face PEFT's folder format, and import PEFT LoRA folders.

`export_peft` writes what ``PeftModel.from_pretrained(base, folder)`` reads: ``adapter_config.json`` in PEFT's schema
(``peft_type`` ``LORA``/``IA3``, ``task_type`` null) and ``adapter_model.safetensors`` with PEFT's key names, adapter
name stripped: ``base_model.model.<module path>.lora_A.weight`` / ``.lora_B.weight`` / ``.ia3_l``.

What PEFT reproduces: the adapted *backbone*, i.e. its hidden states, exactly (load the base with the class our head
uses, ``module.head.auto_class``: `AutoModel` for classification). What it cannot: our task head. PEFT has no notion
of our pooling (mean / last token) nor of our classifier, so the head is stored beside the adapter under the key prefix
`HEAD_PREFIX` (``base_model.model.lightning_adapters_head.``, PEFT's ``modules_to_save`` convention) and listed in
``modules_to_save``; PEFT finds no such module in the base model and leaves those weights alone. `import_peft_lora`
reads them back. The name is deliberately unusual: PEFT matches ``modules_to_save`` by plain suffix, and a short name
such as ``head`` would also match ``lm_head``.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.pytorch_utils import Conv1D

from lightning_adapters.errors import UserInputError
from lightning_adapters.module import AdapterModule
from lightning_adapters.strategies import IA3, IA3Layer, Lora, LoraLayer
from lightning_adapters.strategies.base import adapter_layers

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
HEAD_MODULE = "lightning_adapters_head"
HEAD_PREFIX = f"{PEFT_PREFIX}{HEAD_MODULE}."


def export_peft(module: AdapterModule, folder: str | os.PathLike) -> Path:
    """Write ``module``'s LoRA or IA3 adapter (and head) as a PEFT adapter folder.

    Args:
        module: a module whose strategy is `Lora` or `IA3`; its layers must not be merged.
        folder: the output folder, created if needed.
    """
    backbone, strategy = module.backbone, module.strategy
    if not isinstance(strategy, (Lora, IA3)):
        raise UserInputError(f"export_peft supports Lora and IA3 only, not {type(strategy).__name__} — use "
                             "save_adapter() for the lightning-adapters format")
    layers = dict(adapter_layers(backbone))
    if any(getattr(layer, "merged", False) for layer in layers.values()):
        raise UserInputError("the adapter is merged into the base weights — call unmerge_adapters() before export")
    prefix = _path_prefix(backbone)
    named = {prefix + name: layer for name, layer in layers.items()}
    all_names = [prefix + name for name in _base_module_names(backbone, layers)]
    config = {"peft_type": "LORA" if isinstance(strategy, Lora) else "IA3", "task_type": None,
              "base_model_name_or_path": backbone.config.name_or_path or module.backbone_name, "revision": None,
              "inference_mode": True, "modules_to_save": [HEAD_MODULE],
              "fan_in_fan_out": any(isinstance(layer.base_layer, Conv1D) for layer in layers.values())}
    # Full paths for an encoder taken out of an encoder-decoder: PEFT also sees the decoder, which we never saw.
    targets = (lambda chosen: chosen) if prefix else (lambda chosen: _suffixes(chosen, all_names))
    entries = _lora_entries(strategy, named, targets) if isinstance(strategy, Lora) else _ia3_entries(named, targets)
    config.update(entries[0])
    head = {HEAD_PREFIX + key.removeprefix("head."): value for key, value in module.state_dict().items()
            if key.startswith("head.")}
    tensors = {key: value.detach().float().contiguous().cpu() for key, value in {**entries[1], **head}.items()}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, folder / WEIGHTS_NAME, metadata={"format": "pt"})
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    return folder


def _lora_entries(strategy: Lora, named: dict[str, LoraLayer],
                  targets: Callable[[list[str]], list[str]]) -> tuple[dict, dict[str, torch.Tensor]]:
    config = {"r": strategy.r, "lora_alpha": strategy.alpha, "lora_dropout": strategy.dropout, "bias": "none",
              "use_rslora": strategy.use_rslora, "init_lora_weights": True, "target_modules": targets(list(named))}
    weights = {f"{PEFT_PREFIX}{name}.{part}.weight": getattr(layer, part).weight
               for name, layer in named.items() for part in ("lora_A", "lora_B")}
    return config, weights


def _ia3_entries(named: dict[str, IA3Layer],
                 targets: Callable[[list[str]], list[str]]) -> tuple[dict, dict[str, torch.Tensor]]:
    # PEFT wants feedforward_modules within target_modules: the (stricter) feed-forward suffixes go in both.
    target_modules = targets(list(named))
    feedforward = targets([name for name, layer in named.items() if layer.feedforward])
    config = {"target_modules": target_modules + [s for s in feedforward if s not in target_modules],
              "feedforward_modules": feedforward, "init_ia3_weights": True}
    weights = {f"{PEFT_PREFIX}{name}.ia3_l": _peft_ia3_vector(layer) for name, layer in named.items()}
    return config, weights


def _path_prefix(backbone: nn.Module) -> str:
    """Our classification backbone of an encoder-decoder is its encoder; PEFT loads the whole model around it."""
    return "encoder." if getattr(backbone.config, "is_encoder_decoder", False) and not hasattr(backbone, "encoder") \
        else ""


def _base_module_names(backbone: nn.Module, layers: dict[str, nn.Module]) -> list[str]:
    """Module names as PEFT sees the unadapted base: without the modules our adapter layers added inside."""
    inside = tuple(f"{name}." for name in layers)
    return [name for name, _ in backbone.named_modules() if name and not name.startswith(inside)]


def _suffixes(wrapped: list[str], all_names: list[str]) -> list[str]:
    """The shortest dotted suffix of each wrapped name that no other module name ends with, deduplicated.

    A plain ``endswith`` check (not only at dot boundaries) is deliberately strict: PEFT matches ``target_modules``
    at dot boundaries but ``feedforward_modules`` and ``modules_to_save`` by plain suffix.
    """
    chosen = set(wrapped)
    others = [name for name in all_names if name not in chosen]
    found: list[str] = []
    for name in wrapped:
        parts = name.split(".")
        for k in range(1, len(parts) + 1):
            suffix = ".".join(parts[-k:])
            if not any(other.endswith(suffix) for other in others):
                break
        if suffix not in found:
            found.append(suffix)
    return found


def _peft_ia3_vector(layer: IA3Layer) -> torch.Tensor:
    """PEFT's shapes: (out, 1) for output scaling, (1, in) for input scaling; the fused span padded with ones."""
    scale = layer.full_scale().detach()
    return scale[None, :] if layer.feedforward else scale[:, None]


def import_peft_lora(folder: str | os.PathLike) -> tuple[Lora, dict[str, torch.Tensor]]:
    """Read a PEFT LoRA folder (``save_pretrained`` output, or ours) as a `Lora` strategy and its weights.

    Build the module with the strategy, then load the weights (our names: ``backbone.…``, ``head.…``)::

        strategy, state = import_peft_lora(folder)
        module = AdapterModule(base, strategy=strategy, label_names=labels)
        module.load_state_dict(state, strict=False)

    A head exists only in folders that `export_peft` wrote; PEFT's own ``modules_to_save`` weights (e.g. HF's
    ``classifier``) pool differently from our heads and are skipped with a warning. Module paths are taken as they
    are, so the folder must come from the model our backbone is (not from a T5 whose encoder we use).
    """
    folder = Path(folder)
    try:
        config = json.loads((folder / CONFIG_NAME).read_text())
        raw = load_file(folder / WEIGHTS_NAME)
    except (OSError, ValueError) as err:
        raise UserInputError(f"'{folder}' is not a readable PEFT adapter folder ({err})") from err
    _check_representable(config, folder)
    strategy = Lora(r=int(config["r"]), alpha=config["lora_alpha"], dropout=float(config.get("lora_dropout", 0)),
                    target_modules=config["target_modules"], exclude_modules=config.get("exclude_modules"),
                    use_rslora=bool(config.get("use_rslora", False)))
    state, skipped = {}, []
    for key, value in raw.items():
        if key.startswith(HEAD_PREFIX):
            state["head." + key.removeprefix(HEAD_PREFIX)] = value
        elif ".lora_A." in key or ".lora_B." in key:
            state["backbone." + key.removeprefix(PEFT_PREFIX)] = value
        else:
            skipped.append(key)
    if skipped:
        warnings.warn(f"{len(skipped)} weights of '{folder}' have no place in our module and are skipped "
                      f"(e.g. {skipped[:2]}); train a new head on top of the imported LoRA", stacklevel=2)
    return strategy, state


def _check_representable(config: dict, folder: Path) -> None:
    """Refuse PEFT LoRA options our `Lora` does not implement, rather than load something different."""
    if config.get("peft_type") != "LORA":
        raise UserInputError(f"'{folder}' holds a {config.get('peft_type')} adapter; import_peft_lora reads LoRA only")
    unsupported = {"use_dora": bool(config.get("use_dora")), "rank_pattern": bool(config.get("rank_pattern")),
                   "alpha_pattern": bool(config.get("alpha_pattern")), "bias": config.get("bias", "none") != "none",
                   "layers_to_transform": config.get("layers_to_transform") is not None,
                   "target_parameters": bool(config.get("target_parameters"))}
    used = [name for name, on in unsupported.items() if on]
    if used:
        raise UserInputError(f"'{folder}' uses PEFT LoRA options we do not implement ({', '.join(used)}) — "
                             "retrain without them or load it with PEFT")
