"""Reading Hugging Face PEFT folders (PEFT's own ``save_pretrained`` output, or `export_peft`'s) as our modules.

`import_peft` reads a folder as (strategy, weights), `load_peft` builds the module and checks every weight, and the
base model: our exports carry its fingerprint (safetensors metadata, `FINGERPRINT_KEY`), checked as
`load_adapter` checks it; PEFT's own folders only name their base (``base_model_name_or_path``), compared with the
backbone given. IA3 layers come from the stored vectors themselves (full paths; feed-forward = PEFT's ``(1, in)``
shape), so PEFT's matching rules (suffixes, ``layers_to_transform``...) need no re-implementation. A folder is data
from anywhere: every config field is checked before use and a ``target_modules`` regex before it is ever matched.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from lightning_adapters.adapter_folder import read_json
from lightning_adapters.base_fingerprint import check_fingerprint
from lightning_adapters.errors import UserInputError
from lightning_adapters.heads import TaskHead
from lightning_adapters.module import AdapterModule
from lightning_adapters.patterns import check_pattern
from lightning_adapters.registry import fits, kind_name
from lightning_adapters.strategies import IA3, Lora, PromptTuning, Strategy
from lightning_adapters.strategies.ia3 import FUSED_QKV

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # LoRA/IA3: PeftModel.base_model (the tuner) .model (the HF model)
PROMPT_PREFIX = "base_model."  # prompt learning: PeftModel.base_model is the HF model itself
HEAD_MODULE = "lightning_adapters_head"
HEAD_PREFIX = f"{PEFT_PREFIX}{HEAD_MODULE}."
PROMPT_KEY = "prompt_embeddings"
FINGERPRINT_KEY = "lightning_adapters.base_model"  # safetensors metadata: PEFT ignores it, we check it


def import_peft(folder: str | os.PathLike) -> tuple[Strategy, dict[str, torch.Tensor]]:
    """Read a PEFT LoRA, IA3 or prompt-tuning folder (``save_pretrained`` output, or ours) as our strategy and its
    weights under our names (``backbone.…``, ``head.…``); `load_peft` builds the module and checks them.

    A head exists only in folders that `export_peft` wrote; PEFT's own ``modules_to_save`` weights (e.g. HF's
    ``classifier``) pool differently from our heads and are skipped with a warning. LoRA/IA3 module paths are taken
    as they are: the folder must come from the class our backbone is (`AutoModel`, not ``...ForCausalLM``; not a whole
    T5 for our T5 encoder). A prompt has no paths: PEFT's T5 prompts import into our T5 encoder backbone.
    """
    folder = Path(folder)
    config, raw = _read_folder(folder)
    kind = config.get("peft_type")
    if kind is None and str(config.get("format", "")).startswith("lightning-adapters"):
        raise UserInputError(f"'{folder}' is a lightning-adapters adapter folder, not a PEFT one — load it with "
                             "load_adapter()")
    if kind is None:
        raise UserInputError(f"'{folder / CONFIG_NAME}' has no peft_type — the folder is not a PEFT adapter or is "
                             "corrupt")
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


def _read_folder(folder: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    if not (folder / CONFIG_NAME).is_file() or not (folder / WEIGHTS_NAME).is_file():
        raise UserInputError(f"'{folder}' is not a readable PEFT adapter folder (no {CONFIG_NAME} and "
                             f"{WEIGHTS_NAME}) — pass a folder written by save_pretrained() or export_peft()")
    config = read_json(folder / CONFIG_NAME, "the PEFT adapter folder is corrupt")
    if not isinstance(config, dict):
        raise UserInputError(f"'{folder / CONFIG_NAME}' is not a PEFT adapter config (not a JSON object) — the PEFT "
                             "adapter folder is corrupt")
    try:
        return config, load_file(folder / WEIGHTS_NAME)
    except (SafetensorError, OSError, ValueError) as err:
        raise UserInputError(f"'{folder / WEIGHTS_NAME}' is not a readable safetensors file ({err}) — the PEFT "
                             "adapter folder is corrupt") from err


def load_peft(folder: str | os.PathLike, backbone: str, label_names: list[str] | None = None,
              head: TaskHead | None = None, dtype: str | None = None) -> AdapterModule:
    """An `AdapterModule` on ``backbone`` with a PEFT folder's adapter (and our head, if it holds one), every weight
    checked by name and shape and, for our exports, the base model's fingerprint, so a folder from another base
    model is refused. PEFT's own folders hold no head of ours: the new head keeps its fresh initialisation — train
    it."""
    strategy, state = import_peft(folder)
    module = AdapterModule(backbone, strategy=strategy, head=head, label_names=label_names, dtype=dtype)
    if not any(key.startswith("head.") for key in state):
        state.update({f"head.{name}": param.detach() for name, param in module.head.named_parameters()})
    check_peft_base(module, Path(folder), backbone)  # first: another base also fails the weight check, misleadingly
    module.check_trainable_state(state, f"PEFT folder '{folder}'")
    module.load_state_dict(state, strict=False)
    return module


def check_peft_base(module: AdapterModule, folder: Path, backbone: str) -> None:
    """Our exports: their fingerprint must match. PEFT's own folders only name their base, often by another name
    for the same checkpoint (a hub id vs a local copy), so a differing name only warns, in one line."""
    with safe_open(folder / WEIGHTS_NAME, framework="pt") as weights:
        saved = (weights.metadata() or {}).get(FINGERPRINT_KEY)
    if saved is not None:
        try:
            fingerprint = json.loads(saved)
        except (ValueError, RecursionError) as err:
            raise UserInputError(f"PEFT folder '{folder}' has a corrupt base-model fingerprint — export it again") \
                from err
        check_fingerprint(fingerprint, module.base_fingerprint, f"PEFT folder '{folder}'")
        return
    named = read_json(folder / CONFIG_NAME, "the PEFT adapter folder is corrupt").get("base_model_name_or_path")
    ours = {_last_part(backbone), _last_part(module.base_fingerprint["name_or_path"])}
    if isinstance(named, str) and named and _last_part(named) not in ours:
        warnings.warn(f"PEFT folder '{folder}' was saved for base model '{named}', not '{backbone}', and carries no "
                      "fingerprint to check — make sure it is the same checkpoint", stacklevel=3)


def _last_part(name: Any) -> str:
    """``org/model``, ``/models/model/`` and ``model`` may all name one checkpoint: compare the last part."""
    return str(name).rstrip("/\\").replace("\\", "/").rpartition("/")[2]


def _fields(config: dict, kinds: dict[str, Any], required: tuple[str, ...], folder: Path, what: str) -> None:
    """Refuse a PEFT config whose fields are missing or of the wrong kind, in one line."""
    missing = [key for key in required if config.get(key) is None]
    if missing:
        raise UserInputError(f"'{folder}' {what} config has no {', '.join(missing)} — the adapter folder is "
                             "incomplete or corrupt")
    for key, kind in kinds.items():
        if config.get(key) is not None and not fits(config[key], kind):
            raise UserInputError(f"'{folder}' {what} config: {key}={config[key]!r:.60} should be {kind_name(kind)} — "
                                 "the adapter folder is corrupt")


_Read = dict[str, tuple[str, torch.Tensor]]  # PEFT key -> (our key, tensor)
_LORA_KINDS = {"r": int, "lora_alpha": float, "lora_dropout": float, "target_modules": str | list[str],
               "exclude_modules": str | list[str], "use_rslora": bool}


def _read_lora(config: dict, raw: dict[str, torch.Tensor], folder: Path) -> tuple[Lora, _Read]:
    _fields(config, _LORA_KINDS, ("r", "lora_alpha", "target_modules"), folder, "LoRA")
    for key in ("target_modules", "exclude_modules"):
        if isinstance(config.get(key), str):
            check_pattern(config[key], f"'{folder}' LoRA {key}")
    unsupported = {"use_dora": bool(config.get("use_dora")), "rank_pattern": bool(config.get("rank_pattern")),
                   "alpha_pattern": bool(config.get("alpha_pattern")), "bias": config.get("bias", "none") != "none",
                   "layers_to_transform": config.get("layers_to_transform") is not None,
                   "target_parameters": bool(config.get("target_parameters"))}
    used = [name for name, on in unsupported.items() if on]
    if used:  # refuse rather than load something different
        raise UserInputError(f"'{folder}' uses PEFT LoRA options we do not implement ({', '.join(used)}) — "
                             "retrain without them or load it with PEFT")
    strategy = Lora(r=config["r"], alpha=config["lora_alpha"], dropout=float(config.get("lora_dropout") or 0),
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
    _fields(config, {"num_virtual_tokens": int, "num_transformer_submodules": int}, ("num_virtual_tokens",), folder,
            "prompt tuning")
    n, submodules = config["num_virtual_tokens"], config.get("num_transformer_submodules") or 1
    prompt = raw.get(PROMPT_KEY)
    if not isinstance(n, int) or prompt is None or prompt.dim() != 2 or prompt.shape[0] != n * submodules:
        raise UserInputError(f"'{folder}' has no '{PROMPT_KEY}' of num_virtual_tokens x num_transformer_submodules = "
                             f"{n} x {submodules} rows — the adapter folder is incomplete or corrupt")
    # No init_text: the stored prompt replaces any initialisation (and no tokenizer has to be found).
    return PromptTuning(num_virtual_tokens=n), {PROMPT_KEY: ("backbone.prompt_tuning.prompt", prompt[:n])}


_READERS = {"LORA": (_read_lora, PEFT_PREFIX), "IA3": (_read_ia3, PEFT_PREFIX),
            "PROMPT_TUNING": (_read_prompt, PROMPT_PREFIX)}
