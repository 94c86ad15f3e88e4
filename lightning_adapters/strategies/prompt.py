r"""Prompt tuning: N trainable virtual-token embeddings prepended to the input, in embedding space.

    h = f([P; E(x)], [1_N; m])[N:],    P in R^{N x d} trainable,    E the frozen input embedding,    m the mask

The frozen model reads ``N + s`` positions; a forward pre-hook on the model's top-level forward turns ``input_ids``
into ``inputs_embeds`` (through ``model.get_input_embeddings()``) and prepends ``P``, prepends ones to the attention
mask, zeros to ``token_type_ids``, ``-100`` to token-aligned ``labels`` and shifts explicit ``position_ids`` by N.
A forward hook trims the first N positions from token-aligned outputs (``last_hidden_state``, ``logits``,
``hidden_states``), so heads see the original length and never know. Encoder-decoder models (T5, BART) get the
prompt on the encoder input only: ``encoder_last_hidden_state`` is trimmed, the decoder output is untouched (its
cross-attention still sees the prompt through the extended mask), decoder ``labels`` are left alone.

Positions: a model that derives positions from the sequence length (BERT, GPT-2, Llama) puts the prompt at
positions ``0..N-1`` and the text at ``N..N+s-1``, as PEFT does, so ``N + s`` must fit ``max_position_embeddings``
(checked, with a clear error). Decoders get positions counted along the attention mask instead (as ``generate()``
counts them), so that with left padding the text still starts at position N, right after the prompt.
Not supported: a KV cache (incremental generation) and encoder-decoder calls that pass ``encoder_outputs`` instead of
encoder inputs (``generate()``) — both are refused rather than silently wrong.
BERT's ``pooler_output`` pools the first virtual token, not ``[CLS]``; our heads pool the trimmed hidden states.

Paper: https://arxiv.org/abs/2104.08691 (Lester et al. 2021, "The Power of Scale for Parameter-Efficient Prompt
Tuning").
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
from torch import nn
from transformers.utils import ModelOutput

from lightning_adapters.backbone import is_decoder_only, load_tokenizer
from lightning_adapters.errors import UserInputError
from lightning_adapters.strategies.base import AdapterLayer, Strategy

_ROBERTA_LIKE = {"roberta", "xlm-roberta", "camembert", "longformer"}  # positions start at pad_token_id + 1
_TOKEN_OUTPUTS = ("last_hidden_state", "logits", "hidden_states")
_ENCODER_OUTPUTS = ("encoder_last_hidden_state", "encoder_hidden_states")


class PromptEmbedding(AdapterLayer):
    """The ``N x d`` virtual-token embeddings (fp32) and the two hooks that splice them in and trim them out."""

    def __init__(self, init: torch.Tensor, model: nn.Module) -> None:
        super().__init__()
        self.prompt = nn.Parameter(init.detach().float().clone())
        self.num_virtual_tokens = init.shape[0]
        params = inspect.signature(model.forward).parameters.values()
        self.arg_names = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        self.encoder_decoder = "decoder_input_ids" in self.arg_names
        self.mask_positions = is_decoder_only(model.config) and "position_ids" in self.arg_names
        self.max_length = max_input_length(model.config)
        self.model_type = getattr(model.config, "model_type", type(model).__name__)

    def prepend(self, model: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        """Forward pre-hook (``with_kwargs=True``): the model's inputs with the prompt in front."""
        inputs = {**dict(zip(self.arg_names, args, strict=False)), **kwargs}
        self._refuse_unsupported(inputs)
        n = self.num_virtual_tokens
        embeds = inputs.pop("input_ids", None)
        embeds = model.get_input_embeddings()(embeds) if embeds is not None else inputs["inputs_embeds"]
        batch, length = embeds.shape[:2]
        if self.max_length is not None and length + n > self.max_length:
            raise UserInputError(f"prompt tuning prepends {n} virtual tokens to inputs of {length} tokens: {length + n}"
                                 f" positions, more than the {self.max_length} that model_type '{self.model_type}' "
                                 f"has (max_position_embeddings) — truncate inputs to {self.max_length - n} tokens "
                                 "or use fewer virtual tokens")
        prompt = self.prompt.to(device=embeds.device, dtype=embeds.dtype).expand(batch, -1, -1)
        inputs["inputs_embeds"] = torch.cat([prompt, embeds], dim=1)
        _prepend(inputs, "attention_mask", n, 1)
        _prepend(inputs, "token_type_ids", n, 0)
        if not self.encoder_decoder:  # enc-dec labels are decoder targets, not aligned with the encoder input
            _prepend(inputs, "labels", n, -100)
        if inputs.get("position_ids") is not None:
            positions = inputs["position_ids"]
            start = torch.arange(n, device=positions.device, dtype=positions.dtype).expand(positions.shape[0], -1)
            inputs["position_ids"] = torch.cat([start, positions + n], dim=1)
        elif self.mask_positions:
            # Decoders: count positions along the mask (as generate() does), so left padding does not move the text
            # away from the prompt; with right padding these are the default positions.
            inputs["position_ids"] = positions_along_mask(inputs, length + n, offset=0)[0]
        return (), inputs

    def trim(self, model: nn.Module, args: tuple, output: Any) -> Any:
        """Forward hook: token-aligned outputs without the N prompt positions."""
        if not isinstance(output, ModelOutput):
            raise UserInputError("prompt tuning trims the model's outputs and needs return_dict=True (a ModelOutput), "
                                 f"got {type(output).__name__}")
        n = self.num_virtual_tokens
        for key in _ENCODER_OUTPUTS if self.encoder_decoder else _TOKEN_OUTPUTS:
            value = output.get(key)
            if isinstance(value, torch.Tensor):
                output[key] = value[:, n:]
            elif isinstance(value, tuple):
                output[key] = tuple(h[:, n:] for h in value)
        return output

    def _refuse_unsupported(self, inputs: dict[str, Any]) -> None:
        if inputs.get("past_key_values") is not None:
            raise UserInputError("prompt tuning does not support a KV cache (incremental generation) yet — call the "
                                 "model with past_key_values=None")
        if inputs.get("input_ids") is None and inputs.get("inputs_embeds") is None:
            raise UserInputError("prompt tuning needs input_ids or inputs_embeds in the call (an encoder-decoder "
                                 "called with encoder_outputs only, as generate() does, is not supported yet)")


def _prepend(inputs: dict[str, Any], key: str, n: int, value: int) -> None:
    tensor = inputs.get(key)
    if tensor is not None:
        inputs[key] = torch.cat([tensor.new_full((tensor.shape[0], n), value), tensor], dim=1)


def positions_along_mask(inputs: dict[str, Any], length: int, offset: int) -> tuple[torch.Tensor, int]:
    """Decoder position ids ``offset + (earlier unmasked tokens)`` for the last ``length`` input tokens (the next
    ``length`` positions after the KV cache without a 2-D mask), and one past the largest position they can hold."""
    mask = inputs.get("attention_mask")
    if mask is not None and mask.dim() == 2:
        return offset + mask.long().cumsum(-1)[:, -length:] - 1, offset + mask.shape[1]
    tokens = inputs.get("input_ids") if inputs.get("input_ids") is not None else inputs["inputs_embeds"]
    past = inputs.get("past_key_values")
    start = offset + (past.get_seq_length() if past is not None else 0)
    return torch.arange(start, start + length, device=tokens.device)[None], start + length


def max_input_length(config: Any) -> int | None:
    """Longest input the position embeddings allow (RoBERTa-likes reserve ``pad_token_id + 1`` positions)."""
    limit = getattr(config, "max_position_embeddings", None)
    if not isinstance(limit, int):
        return None
    if getattr(config, "model_type", None) in _ROBERTA_LIKE:
        limit -= (config.pad_token_id or 0) + 1
    return limit


class PromptTuning(Strategy):
    """Prompt tuning: trainable virtual tokens in front of every input.

    Args:
        num_virtual_tokens: number N of virtual tokens (each a trainable embedding vector).
        init_text: initialise the prompt with the embeddings of this text's tokens, repeated or truncated to N
            (Lester et al. find this better than random); default: random normal with the embedding matrix's std.
        tokenizer: the tokenizer for ``init_text``: an alias, folder or hub id (usually the backbone's name).
    """

    def __init__(self, num_virtual_tokens: int = 20, init_text: str | None = None,
                 tokenizer: str | None = None) -> None:
        if num_virtual_tokens < 1:
            raise UserInputError(f"prompt tuning needs num_virtual_tokens >= 1, got {num_virtual_tokens}")
        if init_text is not None and tokenizer is None:
            raise UserInputError("prompt tuning init_text needs the tokenizer to read it with — set tokenizer to "
                                 "the backbone's name (alias, folder or hub id)")
        self.num_virtual_tokens = num_virtual_tokens
        self.init_text = init_text
        self.tokenizer = tokenizer

    def apply(self, model: nn.Module) -> None:
        if any(isinstance(m, PromptEmbedding) for m in model.children()):
            raise UserInputError("the model already has a prompt-tuning prompt — apply PromptTuning once")
        embedding = model.get_input_embeddings()
        layer = PromptEmbedding(self._initial_prompt(embedding), model)
        model.prompt_tuning = layer.to(embedding.weight.device)
        model.register_forward_pre_hook(layer.prepend, with_kwargs=True)
        model.register_forward_hook(layer.trim)

    @torch.no_grad()
    def _initial_prompt(self, embedding: nn.Module) -> torch.Tensor:
        n, weight = self.num_virtual_tokens, embedding.weight
        if self.init_text is None:
            return torch.randn(n, weight.shape[1], device=weight.device) * weight.float().std()
        ids = load_tokenizer(self.tokenizer)(self.init_text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise UserInputError(f"prompt tuning init_text {self.init_text!r} has no tokens — pass a non-empty text")
        ids = (ids * math.ceil(n / len(ids)))[:n]
        return embedding(torch.tensor(ids, device=weight.device)).float()
