"""Hugging Face PEFT folders: export our LoRA, IA3 and prompt tuning; import PEFT's LoRA, IA3 and prompt tuning.

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

`import_peft` reads a folder as (strategy, weights), `load_peft` builds the module and checks every weight. IA3 layers
come from the stored vectors themselves (full paths; feed-forward = PEFT's ``(1, in)`` shape), so PEFT's matching
rules (suffixes, ``layers_to_transform``...) need no re-implementation.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM
from transformers.pytorch_utils import Conv1D

from lightning_adapters.backbone import resolve
from lightning_adapters.errors import UserInputError
from lightning_adapters.heads import TaskHead
from lightning_adapters.module import AdapterModule
from lightning_adapters.strategies import IA3, Lora, PromptTuning, Strategy
from lightning_adapters.strategies.base import adapter_layers
from lightning_adapters.strategies.ia3 import FUSED_QKV

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # LoRA/IA3: PeftModel.base_model (the tuner) .model (the HF model)
PROMPT_PREFIX = "base_model."  # prompt learning: PeftModel.base_model is the HF model itself
HEAD_MODULE = "lightning_adapters_head"
HEAD_PREFIX = f"{PEFT_PREFIX}{HEAD_MODULE}."
PROMPT_KEY = "prompt_embeddings"
# head.auto_class -> the PEFT task whose forward prepends the prompt to the (encoder) input as ours does
TASK_TYPES = {AutoModel: "FEATURE_EXTRACTION", AutoModelForCausalLM: "CAUSAL_LM", AutoModelForSeq2SeqLM: "SEQ_2_SEQ_LM"}


def export_peft(module: AdapterModule, folder: str | os.PathLike) -> Path:
    """Write ``module``'s LoRA, IA3 or prompt-tuning adapter (and head) as a PEFT adapter folder.

    Args:
        module: a module whose strategy is `Lora`, `IA3` (layers not merged) or `PromptTuning`.
        folder: the output folder, created if needed.
    """
    strategy = module.strategy
    if isinstance(strategy, PromptTuning):
        config, weights, prefix = *_prompt_entries(module), PROMPT_PREFIX
    elif isinstance(strategy, (Lora, IA3)):
        config, weights, prefix = *_tuner_entries(module), PEFT_PREFIX
    else:
        raise UserInputError(f"export_peft supports Lora, IA3 and PromptTuning, not {type(strategy).__name__} — use "
                             "save_adapter() for the lightning-adapters format")
    config = {"peft_type": config.pop("peft_type"), "task_type": config.pop("task_type", None),
              "base_model_name_or_path": module.backbone.config.name_or_path or module.backbone_name,
              "revision": None, "inference_mode": True, "modules_to_save": [HEAD_MODULE], **config}
    head = {f"{prefix}{HEAD_MODULE}.{key.removeprefix('head.')}": value for key, value in module.state_dict().items()
            if key.startswith("head.")}
    tensors = {key: value.detach().float().contiguous().cpu() for key, value in {**weights, **head}.items()}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, folder / WEIGHTS_NAME, metadata={"format": "pt"})
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    return folder


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


def import_peft(folder: str | os.PathLike) -> tuple[Strategy, dict[str, torch.Tensor]]:
    """Read a PEFT LoRA, IA3 or prompt-tuning folder (``save_pretrained`` output, or ours) as our strategy and its
    weights under our names (``backbone.…``, ``head.…``); `load_peft` builds the module and checks them.

    A head exists only in folders that `export_peft` wrote; PEFT's own ``modules_to_save`` weights (e.g. HF's
    ``classifier``) pool differently from our heads and are skipped with a warning. LoRA/IA3 module paths are taken
    as they are: the folder must come from the class our backbone is (`AutoModel`, not ``...ForCausalLM``; not a whole
    T5 for our T5 encoder). A prompt has no paths: PEFT's T5 prompts import into our T5 encoder backbone.
    """
    folder = Path(folder)
    try:
        config = json.loads((folder / CONFIG_NAME).read_text())
        raw = load_file(folder / WEIGHTS_NAME)
    except (OSError, ValueError) as err:
        raise UserInputError(f"'{folder}' is not a readable PEFT adapter folder ({err})") from err
    kind = config.get("peft_type")
    if kind not in _READERS:
        raise UserInputError(f"'{folder}' holds a {kind} adapter; import_peft reads {', '.join(_READERS)} only — "
                             "load it with PEFT")
    read, prefix = _READERS[kind]
    strategy, adapter = read(config, raw, folder)
    head_prefix = f"{prefix}{HEAD_MODULE}."
    state = {ours: value for ours, value in adapter.values()}
    state.update({"head." + key.removeprefix(head_prefix): value for key, value in raw.items()
                  if key.startswith(head_prefix)})
    skipped = [key for key in raw if key not in adapter and not key.startswith(head_prefix)]
    if skipped:
        warnings.warn(f"{len(skipped)} weights of '{folder}' have no place in our module and are skipped "
                      f"(e.g. {skipped[:2]}); train a new head on top of the imported adapter", stacklevel=2)
    return strategy, state


def load_peft(folder: str | os.PathLike, backbone: str, label_names: list[str] | None = None,
              head: TaskHead | None = None, dtype: str | None = None) -> AdapterModule:
    """An `AdapterModule` on ``backbone`` with a PEFT folder's adapter (and our head, if it holds one), every weight
    checked by name and shape, so a folder from another base model is refused. PEFT's own folders hold no head of
    ours: the new head keeps its fresh initialisation — train it."""
    strategy, state = import_peft(folder)
    module = AdapterModule(backbone, strategy=strategy, head=head, label_names=label_names, dtype=dtype)
    if not any(key.startswith("head.") for key in state):
        state.update({f"head.{name}": param.detach() for name, param in module.head.named_parameters()})
    module.check_trainable_state(state, f"PEFT folder '{folder}'")
    module.load_state_dict(state, strict=False)
    return module


_Read = dict[str, tuple[str, torch.Tensor]]  # PEFT key -> (our key, tensor)


def _read_lora(config: dict, raw: dict[str, torch.Tensor], folder: Path) -> tuple[Lora, _Read]:
    unsupported = {"use_dora": bool(config.get("use_dora")), "rank_pattern": bool(config.get("rank_pattern")),
                   "alpha_pattern": bool(config.get("alpha_pattern")), "bias": config.get("bias", "none") != "none",
                   "layers_to_transform": config.get("layers_to_transform") is not None,
                   "target_parameters": bool(config.get("target_parameters"))}
    used = [name for name, on in unsupported.items() if on]
    if used:  # refuse rather than load something different
        raise UserInputError(f"'{folder}' uses PEFT LoRA options we do not implement ({', '.join(used)}) — "
                             "retrain without them or load it with PEFT")
    strategy = Lora(r=int(config["r"]), alpha=config["lora_alpha"], dropout=float(config.get("lora_dropout", 0)),
                    target_modules=config["target_modules"], exclude_modules=config.get("exclude_modules"),
                    use_rslora=bool(config.get("use_rslora", False)))
    return strategy, {key: ("backbone." + key.removeprefix(PEFT_PREFIX), value) for key, value in raw.items()
                      if ".lora_A." in key or ".lora_B." in key}


def _read_ia3(config: dict, raw: dict[str, torch.Tensor], folder: Path) -> tuple[IA3, _Read]:
    """The wrapped modules are the stored vectors' paths; PEFT's ``(1, in)`` vectors scale inputs (feed-forward)."""
    vectors = {key.removeprefix(PEFT_PREFIX).removesuffix(".ia3_l"): value for key, value in raw.items()
               if key.startswith(PEFT_PREFIX) and key.endswith(".ia3_l")}
    if not vectors:
        raise UserInputError(f"'{folder}' holds no IA3 vectors (no '<module>.ia3_l' weights) — the adapter file is "
                             "incomplete")
    feedforward = [name for name, vector in vectors.items() if vector.dim() == 2 and vector.shape[0] == 1]
    adapter = {}
    for name, vector in vectors.items():
        flat = vector.reshape(-1)
        if name not in feedforward and name.rpartition(".")[2] in FUSED_QKV and flat.numel() % 3 == 0:
            queries, flat = flat.split([flat.numel() // 3, 2 * flat.numel() // 3])
            if not torch.equal(queries, torch.ones_like(queries)):
                raise UserInputError(f"'{folder}' scales the queries of the fused projection '{name}'; our IA3 scales "
                                     "its keys and values only, as the paper does — load the folder with PEFT")
        adapter[f"{PEFT_PREFIX}{name}.ia3_l"] = (f"backbone.{name}.ia3_l", flat)
    return IA3(target_modules=list(vectors), feedforward_modules=feedforward), adapter


def _read_prompt(config: dict, raw: dict[str, torch.Tensor], folder: Path) -> tuple[PromptTuning, _Read]:
    """PEFT's seq2seq prompt tuning stores 2N rows (``num_transformer_submodules`` 2) but feeds only the first N to
    the encoder and none to the decoder, in forward and in generate: those N rows are the prompt."""
    n, submodules = config.get("num_virtual_tokens"), config.get("num_transformer_submodules") or 1
    prompt = raw.get(PROMPT_KEY)
    if not isinstance(n, int) or prompt is None or prompt.dim() != 2 or prompt.shape[0] != n * submodules:
        raise UserInputError(f"'{folder}' has no '{PROMPT_KEY}' of num_virtual_tokens x num_transformer_submodules = "
                             f"{n} x {submodules} rows — the adapter folder is incomplete or corrupt")
    # No init_text: the stored prompt replaces any initialisation (and no tokenizer has to be found).
    return PromptTuning(num_virtual_tokens=n), {PROMPT_KEY: ("backbone.prompt_tuning.prompt", prompt[:n])}


_READERS = {"LORA": (_read_lora, PEFT_PREFIX), "IA3": (_read_ia3, PEFT_PREFIX),
            "PROMPT_TUNING": (_read_prompt, PROMPT_PREFIX)}
