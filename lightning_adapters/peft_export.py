"""Hugging Face PEFT folders: export our LoRA, IA3 and prompt tuning; import PEFT's (`peft_import`, re-exported here).

`export_peft` writes what ``PeftModel.from_pretrained(base, folder)`` reads: ``adapter_config.json`` in PEFT's schema
and ``adapter_model.safetensors`` under PEFT's key names: ``base_model.model.<module path>.lora_A.weight`` /
``.lora_B.weight`` / ``.ia3_l`` (``task_type`` null), or ``prompt_embeddings`` (``N x d``; ``task_type`` from the
head's base class, `TASK_TYPES`; one transformer submodule: T5 gets the prompt on its encoder only, as ours does).

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
from lightning_adapters.strategies import IA3, Lora, PromptTuning
from lightning_adapters.strategies.base import adapter_layers

__all__ = ["CONFIG_NAME", "FINGERPRINT_KEY", "HEAD_MODULE", "HEAD_PREFIX", "PEFT_PREFIX", "PROMPT_KEY", "PROMPT_PREFIX",
           "TASK_TYPES", "WEIGHTS_NAME", "export_peft", "import_peft", "load_peft"]
# head.auto_class -> the PEFT task whose forward prepends the prompt to the (encoder) input as ours does
TASK_TYPES = {AutoModel: "FEATURE_EXTRACTION", AutoModelForCausalLM: "CAUSAL_LM", AutoModelForSeq2SeqLM: "SEQ_2_SEQ_LM"}


def export_peft(module: AdapterModule, folder: str | os.PathLike, card: dict | None = None) -> Path:
    """Write ``module``'s LoRA, IA3 or prompt-tuning adapter (and head) as a PEFT adapter folder.

    Args:
        module: a module whose strategy is `Lora`, `IA3` (layers not merged) or `PromptTuning`.
        folder: the output folder, created if needed; an existing one may hold only an adapter folder's files.
        card: optional model-card fields, as for `save_adapter`.
    """
    strategy = module.strategy
    if isinstance(strategy, PromptTuning):
        config, weights, prefix = *_prompt_entries(module), PROMPT_PREFIX
    elif isinstance(strategy, (Lora, IA3)):
        config, weights, prefix = *_tuner_entries(module), PEFT_PREFIX
    else:
        raise UserInputError(f"export_peft supports Lora, IA3 and PromptTuning, not {type(strategy).__name__} — use "
                             "save_adapter() for the lightning-adapters format")
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


def _prompt_entries(module: AdapterModule) -> tuple[dict, dict[str, torch.Tensor]]:
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
    return fields, {PROMPT_KEY: prompt}


def _tuner_entries(module: AdapterModule) -> tuple[dict, dict[str, torch.Tensor]]:
    """LoRA/IA3 config fields and weights under PEFT's module paths."""
    backbone, strategy = module.backbone, module.strategy
    layers = dict(adapter_layers(backbone))
    if any(getattr(layer, "merged", False) for layer in layers.values()):
        raise UserInputError("the adapter is merged into the base weights — call unmerge_adapters() before export")
    prefix = _path_prefix(backbone)
    named = {prefix + name: layer for name, layer in layers.items()}
    inside = tuple(f"{name}." for name in layers)  # PEFT sees the unadapted base: not the modules we added inside
    all_names = [prefix + name for name, _ in backbone.named_modules() if name and not name.startswith(inside)]
    # Full paths for an encoder taken out of an encoder-decoder: PEFT also sees the decoder, which we never saw.
    targets = (lambda chosen: chosen) if prefix else (lambda chosen: _suffixes(chosen, all_names))
    config = {"fan_in_fan_out": any(isinstance(layer.base_layer, Conv1D) for layer in layers.values())}
    if isinstance(strategy, Lora):
        config.update(peft_type="LORA", r=strategy.r, lora_alpha=strategy.alpha, lora_dropout=strategy.dropout,
                      bias="none", use_rslora=strategy.use_rslora, init_lora_weights=True,
                      target_modules=targets(list(named)))
        return config, {f"{PEFT_PREFIX}{name}.{part}.weight": getattr(layer, part).weight
                        for name, layer in named.items() for part in ("lora_A", "lora_B")}
    # PEFT wants feedforward_modules within target_modules: the (stricter) feed-forward suffixes go in both.
    target_modules = targets(list(named))
    feedforward = targets([name for name, layer in named.items() if layer.feedforward])
    config.update(peft_type="IA3", target_modules=target_modules + [s for s in feedforward if s not in target_modules],
                  feedforward_modules=feedforward, init_ia3_weights=True)
    # PEFT's shapes: (out, 1) for output scaling, (1, in) for input scaling; a fused span padded with ones
    vectors = {name: layer.full_scale().detach() for name, layer in named.items()}
    return config, {f"{PEFT_PREFIX}{name}.ia3_l": vector[None, :] if named[name].feedforward else vector[:, None]
                    for name, vector in vectors.items()}


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
