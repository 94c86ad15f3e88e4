"""Encoding source -> target examples: the backbone kind, the prompt template, source truncation, token ids.

Decoder-only models read ``prompt + target + EOS`` with labels on ``target + EOS`` only (and generate from the
prompt); encoder-decoders read the filled template and predict the target. Long sources are cut on the tokenizer's
character offsets, so the kept text is the original text, never a decode of token ids: ``head`` keeps the first
tokens, ``tail`` the last, ``head_tail`` the first half and the last half (joined by `` ... ``; Sun et al. 2019,
https://arxiv.org/abs/1905.05583, found head+tail best for long documents), ``none`` refuses the input.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any, Literal

from lightning_adapters.backbone import is_decoder_only, resolve
from lightning_adapters.errors import UserInputError

Truncation = Literal["head", "tail", "head_tail", "none"]
_GGUF_STRING = 8


def decoder_only_backbone(name: str) -> bool:
    """Whether backbone ``name`` is a decoder-only LM, read from its config.json or its GGUF header.

    A GGUF file starts with its ``general.architecture`` string; reading just that is instant, while parsing the
    whole file (as ``AutoConfig`` does) takes tens of seconds. Only ``t5`` GGUFs are encoder-decoders.
    """
    source = resolve(name)
    if source.gguf_file:
        with open(Path(source.path) / source.gguf_file, "rb") as file:
            magic, _, _, _ = struct.unpack("<4sIQQ", file.read(24))
            (key_length,) = struct.unpack("<Q", file.read(8))
            key = file.read(key_length)
            (kind,) = struct.unpack("<I", file.read(4))
            if magic == b"GGUF" and key == b"general.architecture" and kind == _GGUF_STRING:
                (length,) = struct.unpack("<Q", file.read(8))
                return file.read(length).decode() not in ("t5", "t5encoder")
    from transformers import AutoConfig

    return is_decoder_only(AutoConfig.from_pretrained(source.path, **source.kwargs()))


def check_template(template: str) -> None:
    """``template`` must hold a ``{source}`` field and no other (literal braces are written ``{{ }}``)."""
    if "{source}" not in template:
        raise UserInputError(f"prompt_template {template!r} has no {{source}} field — add one")
    try:
        template.format(source="")
    except (KeyError, IndexError, ValueError) as err:
        raise UserInputError(f"prompt_template {template!r} has a field other than {{source}} ({err}) — write "
                             "literal braces as {{ and }}") from err


def truncate_source(text: str, tokenizer, max_tokens: int, mode: str, where: str) -> str:
    """``text`` cut to at most ``max_tokens`` tokens (module docstring), on character offsets of the original text."""
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = encoded["offset_mapping"]
    if len(offsets) <= max_tokens:
        return text
    if mode == "none":
        raise UserInputError(f"{where}: the source has {len(offsets)} tokens, more than max_source_length="
                             f"{max_tokens}, and truncation is 'none' — raise max_source_length (within the model's "
                             "context) or set truncation to head, tail or head_tail")
    if mode == "head":
        return text[:offsets[max_tokens - 1][1]]
    if mode == "tail":
        return text[offsets[len(offsets) - max_tokens][0]:]
    head = max(1, (max_tokens - 1) // 2)  # one token's room for the " ... " joint
    tail = max(1, max_tokens - 1 - head)
    return text[:offsets[head - 1][1]] + " ... " + text[offsets[len(offsets) - tail][0]:]


def encode_example(tokenizer, prompt: str, target: str | None, max_target_length: int, decoder_only: bool,
                   special_tokens: bool) -> dict[str, Any]:
    """Token ids of one example: decoder-only ``prompt + target + EOS`` with labels on ``target + EOS``;
    encoder-decoder ``prompt`` -> ``target`` (the tokenizer adds its own end token)."""
    if not decoder_only:
        labels = [] if target is None else tokenizer(text_target=target)["input_ids"]
        if len(labels) > max_target_length:
            labels = labels[:max_target_length - 1] + labels[-1:]  # keep the end token
        return {"input_ids": tokenizer(prompt)["input_ids"], "labels": labels}
    prompt_ids = tokenizer(prompt, add_special_tokens=special_tokens)["input_ids"]
    target_ids = []
    if target is not None:
        # The model writes the target after the prompt: a space first where the prompt does not end in whitespace.
        spaced = target if not prompt or prompt[-1].isspace() else " " + target
        target_ids = tokenizer(spaced, add_special_tokens=False)["input_ids"][:max_target_length - 1]
        target_ids.append(tokenizer.eos_token_id)
    return {"input_ids": prompt_ids + target_ids, "labels": [-100] * len(prompt_ids) + target_ids,
            "prompt_ids": prompt_ids}
