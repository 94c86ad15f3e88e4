"""Hugging Face PEFT folders: export our LoRA, IA3 and prompt tuning; import PEFT's (`peft_import`, re-exported here).

`export_peft` writes what ``PeftModel.from_pretrained(base, folder)`` reads: ``adapter_config.json`` in PEFT's schema
and ``adapter_model.safetensors`` under PEFT's key names: ``base_model.model.<module path>.lora_A.weight`` /
``.lora_B.weight`` / ``.ia3_l`` (``task_type`` null), or ``prompt_embeddings`` (``N x d``; ``task_type`` from the
head's base class, `TASK_TYPES`; one transformer submodule: T5 gets the prompt on its encoder only, as ours does).
The format is the strategy class's own declaration (`Strategy.peft_type`), read on that exact class: a subclass (a
DoRA built on `Lora`) exports only once it declares a format of its own, and an export that would leave out a trained
weight (one the format has no place for, or a base weight the user unfroze) is refused rather than written.

PEFT reproduces the adapted *backbone* (load the base with ``module.head.auto_class``). Its prompt tuning returns the N
virtual positions in front (we trim them) and passes no ``position_ids``/``token_type_ids``: its text sits at positions
``N + index in the padded row``: ours for single-segment inputs, in decoders only without left padding (ours count
positions along the mask there). Our task head PEFT cannot run; it travels beside the adapter under
``<base>.lightning_adapters_head.`` (PEFT's ``modules_to_save`` layout: ``base_model.model.`` for LoRA/IA3,
``base_model.`` for prompt learning), listed in ``modules_to_save``; PEFT finds no such module and leaves it alone.
The name is deliberately unusual: PEFT matches ``modules_to_save`` by plain suffix (``head`` would match ``lm_head``).

The folder is written as a whole, as `save_adapter` writes its own (`replace_folder`: a failed export leaves the old
folder as it was, and no file is written through a symlink), with a model card; the base model is recorded by the
name the user gave when that is an alias (``minilm``, not the install path), and its fingerprint travels in the
safetensors metadata, where `load_peft` checks it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM
from transformers.pytorch_utils import Conv1D

from lightning_adapters.atomic import replace_folder
from lightning_adapters.backbone import alias_for, resolve
from lightning_adapters.errors import UserInputError
from lightning_adapters.model_card import CARD_NAME, model_card
from lightning_adapters.module import AdapterModule
from lightning_adapters.peft_import import (
    CONFIG_NAME,
    FINGERPRINT_KEY,
    HEAD_MODULE,
    HEAD_PREFIX,
    PEFT_PREFIX,
    PROMPT_KEY,
    PROMPT_PREFIX,
    WEIGHTS_NAME,
    import_peft,
    load_peft,
)
from lightning_adapters.strategies import declared_peft_type
from lightning_adapters.strategies.base import adapter_layers

__all__ = ["CONFIG_NAME", "FINGERPRINT_KEY", "HEAD_MODULE", "HEAD_PREFIX", "PEFT_PREFIX", "PROMPT_KEY", "PROMPT_PREFIX",
           "TASK_TYPES", "WEIGHTS_NAME", "export_peft", "import_peft", "load_peft"]
# head.auto_class -> the PEFT task whose forward prepends the prompt to the (encoder) input as ours does
TASK_TYPES = {AutoModel: "FEATURE_EXTRACTION", AutoModelForCausalLM: "CAUSAL_LM", AutoModelForSeq2SeqLM: "SEQ_2_SEQ_LM"}
# Until ia3.py declares ``peft_type = "IA3"`` itself; exact classes only, as `declared_peft_type` reads them.
_Entries = tuple[dict, dict[str, tuple[str, torch.Tensor]]]  # (config fields, our weight name -> (PEFT key, tensor))


def export_peft(module: AdapterModule, folder: str | os.PathLike, card: dict | None = None) -> Path:
    """Write ``module``'s LoRA, IA3 or prompt-tuning adapter (and head) as a PEFT adapter folder.

    Args:
        module: a module whose strategy class declares a PEFT format (`Strategy.peft_type`): `Lora`, `IA3` (layers
            not merged), `PromptTuning`.
        folder: the output folder, created if needed; an existing one may hold only an adapter folder's files.
        card: optional model-card fields, as for `save_adapter`.
    """
    strategy = module.strategy
    kind = declared_peft_type(strategy)  # the exact class's own: a subclass may hold weights its parent's has not
    if kind not in _WRITERS:
        raise UserInputError(f"{type(strategy).__name__} declares no PEFT format (peft_type) that export_peft writes "
                             f"({', '.join(_WRITERS)}) — use save_adapter() for the lightning-adapters format")
    config, entries = _WRITERS[kind](module)
    _check_every_weight_exported(module, entries, kind)
    prefix = PROMPT_PREFIX if kind == "PROMPT_TUNING" else PEFT_PREFIX
    weights = dict(entries.values())
    base = alias_for(module.backbone.config.name_or_path) or module.backbone_name
    config = {"peft_type": config.pop("peft_type"), "task_type": config.pop("task_type", None),
              "base_model_name_or_path": base, "revision": None, "inference_mode": True,
              "modules_to_save": [HEAD_MODULE], **config}
    head = {f"{prefix}{HEAD_MODULE}.{key.removeprefix('head.')}": value for key, value in module.state_dict().items()
            if key.startswith("head.")}
    tensors = {key: value.detach().float().contiguous().cpu() for key, value in {**weights, **head}.items()}
    metadata = {"format": "pt", FINGERPRINT_KEY: json.dumps(module.base_fingerprint)}
    text = model_card(module, base, strategy.hparams(), card, library="peft")

    def write(tmp: Path) -> None:
        save_file(tensors, tmp / WEIGHTS_NAME, metadata=metadata)
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        (tmp / CARD_NAME).write_text(text)

    return replace_folder(folder, write, {CONFIG_NAME, WEIGHTS_NAME, CARD_NAME})


def _check_every_weight_exported(module: AdapterModule, entries: dict, kind: str) -> None:
    """Refuse an export that would drop a trained backbone weight (an extra weight of the strategy's layers, a
    LayerNorm the user unfroze): PEFT's format would reproduce another model."""
    left_out = [name for name in module.trainable_names()
                if name.startswith("backbone.") and name.removeprefix("backbone.") not in entries]
    if left_out:
        raise UserInputError(f"a PEFT {kind} folder has no place for {len(left_out)} trained weights (e.g. "
                             f"'{left_out[0]}') — use save_adapter() for the lightning-adapters format")


def _prompt_entries(module: AdapterModule) -> _Entries:
    """PEFT's PromptTuningConfig fields (sizes as PEFT reads them from the model config) and the prompt."""
    strategy, config = module.strategy, module.backbone.config
    task_type = TASK_TYPES.get(module.head.auto_class)
    if task_type is None:
        known = ", ".join(cls.__name__ for cls in TASK_TYPES)
        raise UserInputError(f"export_peft writes prompt tuning for heads that load the base with {known}, not "
                             f"{module.head.auto_class.__name__} — use save_adapter()")
    prompt = module.backbone.prompt_tuning.prompt
    fields = {"peft_type": "PROMPT_TUNING", "task_type": task_type, "num_virtual_tokens": prompt.shape[0],
              "token_dim": prompt.shape[1], "num_transformer_submodules": 1,
              "num_attention_heads": getattr(config, "num_attention_heads", None),
              "num_layers": getattr(config, "num_hidden_layers", None),
              # read by get_peft_model(base, config) to start a new prompt (loading never re-initialises)
              "prompt_tuning_init": "TEXT" if strategy.init_text else "RANDOM",
              "prompt_tuning_init_text": strategy.init_text}
    if strategy.init_text:  # a path PEFT's AutoTokenizer finds: aliases resolved, a GGUF file named
        source = resolve(strategy.tokenizer)
        fields.update(tokenizer_name_or_path=source.path, tokenizer_kwargs=source.kwargs() or None)
    return fields, {"prompt_tuning.prompt": (PROMPT_KEY, prompt)}


def _tuner_layers(module: AdapterModule) -> tuple[dict, dict[str, nn.Module], str, Callable[[list[str]], list[str]]]:
    """What LoRA and IA3 exports share: config fields, the wrapped layers by our module path, the prefix that makes a
    path PEFT's, and how a list of PEFT paths is written as target modules."""
    backbone = module.backbone
    layers = dict(adapter_layers(backbone))
    if any(getattr(layer, "merged", False) for layer in layers.values()):
        raise UserInputError("the adapter is merged into the base weights — call unmerge_adapters() before export")
    prefix = _path_prefix(backbone)
    inside = tuple(f"{name}." for name in layers)  # PEFT sees the unadapted base: not the modules we added inside
    all_names = [prefix + name for name, _ in backbone.named_modules() if name and not name.startswith(inside)]
    # Full paths for an encoder taken out of an encoder-decoder: PEFT also sees the decoder, which we never saw.
    targets = (lambda chosen: chosen) if prefix else (lambda chosen: _suffixes(chosen, all_names))
    config = {"fan_in_fan_out": any(isinstance(layer.base_layer, Conv1D) for layer in layers.values())}
    return config, layers, prefix, targets


def _lora_entries(module: AdapterModule) -> _Entries:
    """PEFT's LoraConfig fields and ``lora_A``/``lora_B`` weights under PEFT's module paths."""
    config, layers, prefix, targets = _tuner_layers(module)
    strategy = module.strategy
    config.update(peft_type="LORA", r=strategy.r, lora_alpha=strategy.alpha, lora_dropout=strategy.dropout,
                  bias="none", use_rslora=strategy.use_rslora, init_lora_weights=True,
                  target_modules=targets([prefix + name for name in layers]))
    return config, {f"{name}.{part}.weight": (f"{PEFT_PREFIX}{prefix}{name}.{part}.weight", getattr(layer, part).weight)
                    for name, layer in layers.items() for part in ("lora_A", "lora_B")}


def _ia3_entries(module: AdapterModule) -> _Entries:
    """PEFT's IA3Config fields and ``ia3_l`` vectors under PEFT's module paths."""
    config, layers, prefix, targets = _tuner_layers(module)
    # PEFT wants feedforward_modules within target_modules: the (stricter) feed-forward suffixes go in both.
    target_modules = targets([prefix + name for name in layers])
    feedforward = targets([prefix + name for name, layer in layers.items() if layer.feedforward])
    config.update(peft_type="IA3", target_modules=target_modules + [s for s in feedforward if s not in target_modules],
                  feedforward_modules=feedforward, init_ia3_weights=True)

    def vector(layer: nn.Module) -> torch.Tensor:  # PEFT's (out, 1) output / (1, in) input scaling, padded with ones
        scale = layer.full_scale().detach()
        return scale[None, :] if layer.feedforward else scale[:, None]

    return config, {f"{name}.ia3_l": (f"{PEFT_PREFIX}{prefix}{name}.ia3_l", vector(layer))
                    for name, layer in layers.items()}


_WRITERS = {"LORA": _lora_entries, "IA3": _ia3_entries, "PROMPT_TUNING": _prompt_entries}


def _path_prefix(backbone: nn.Module) -> str:
    """Our classification backbone of an encoder-decoder is its encoder; PEFT loads the whole model around it."""
    return "encoder." if getattr(backbone.config, "is_encoder_decoder", False) and not hasattr(backbone, "encoder") \
        else ""


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
