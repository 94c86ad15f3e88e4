r"""Prompt tuning: N trainable virtual-token embeddings prepended to the input, in embedding space.

    h = f([P; E(x)], [1_N; m])[N:],    P in R^{N x d} trainable,    E the frozen input embedding,    m the mask

The frozen model reads ``N + s`` positions; a forward pre-hook on the model's top-level forward turns ``input_ids``
into ``inputs_embeds`` (through ``model.get_input_embeddings()``) and prepends ``P``, prepends ones to the attention
mask, zeros to ``token_type_ids``, ``-100`` to token-aligned ``labels`` and shifts explicit ``position_ids`` by N.
A forward hook trims the first N positions from token-aligned outputs (``last_hidden_state``, ``logits``,
``hidden_states``; outputs of another length, e.g. ``logits_to_keep=1``, are left alone), so heads see the original
length and never know.

Encoder-decoder models (T5, BART) get the prompt on the encoder input only, through a pre-hook on the encoder itself:
it prepends ``P`` however the encoder is called — by the model's forward or directly by ``generate()``, which then
passes ``encoder_outputs`` (with the N prompt positions) to every decoding step. The top-level pre-hook extends the
encoder attention mask by N (the decoder's cross-attention must see the prompt); the top-level output's
``encoder_last_hidden_state`` is trimmed, the decoder output is untouched, decoder ``labels`` are left alone.

Positions: a model that derives positions from the sequence length (BERT, GPT-2, Llama) puts the prompt at
positions ``0..N-1`` and the text at ``N..N+s-1``, as PEFT does, so ``N + s`` must fit ``max_position_embeddings``
(checked, with a clear error). Decoders get positions counted along the attention mask instead (as ``generate()``
counts them), so that with left padding the text still starts at position N, right after the prompt.

KV cache (incremental decoding, ``generate()``): the call that fills an empty cache gets the prompt, so the cache holds
it; later calls prepend nothing, but their attention mask (which ``generate()`` counts without the prompt) gets N ones
in front and explicit ``position_ids`` move by N. Greedy generation is therefore token-for-token the generation from
the concatenated input ``[P; x]``. A cache must be a transformers ``Cache`` (legacy tuples are refused).
BERT's ``pooler_output`` pools the first virtual token, not ``[CLS]``; our heads pool the trimmed hidden states.

Paper: https://arxiv.org/abs/2104.08691 (Lester et al. 2021, "The Power of Scale for Parameter-Efficient Prompt
Tuning").
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn
from transformers.utils import ModelOutput

from lightning_adapters.backbone import is_decoder_only
from lightning_adapters.errors import UserInputError
from lightning_adapters.strategies.base import AdapterLayer, Strategy
from lightning_adapters.strategies.virtual_tokens import (
    check_init_text,
    init_token_ids,
    kv_cache,
    max_input_length,
    positions_along_mask,
)

_TOKEN_OUTPUTS = ("last_hidden_state", "logits", "hidden_states")
_ENCODER_OUTPUTS = ("encoder_last_hidden_state", "encoder_hidden_states")


class PromptEmbedding(AdapterLayer):
    """The ``N x d`` virtual-token embeddings (fp32) and the hooks that splice them in and trim them out."""

    def __init__(self, init: torch.Tensor, model: nn.Module) -> None:
        super().__init__()
        self.prompt = nn.Parameter(init.detach().float().clone())
        self.num_virtual_tokens = init.shape[0]
        self.arg_names = _arg_names(model)
        self.encoder_decoder = "decoder_input_ids" in self.arg_names
        self.encoder_arg_names = _arg_names(model.get_encoder()) if self.encoder_decoder else []
        self.mask_positions = is_decoder_only(model.config) and "position_ids" in self.arg_names
        self.max_length = max_input_length(model.config)
        self.model_type = getattr(model.config, "model_type", type(model).__name__)
        self._full_length: int | None = None  # N + s of the current call (None: nothing was prepended)

    def hooks(self, model: nn.Module) -> None:
        """Register the hooks: on the model (decoder-only, encoders), or on the encoder and the model (enc-dec)."""
        if self.encoder_decoder:
            model.get_encoder().register_forward_pre_hook(self.prepend_to_encoder, with_kwargs=True)
            model.register_forward_pre_hook(self.extend_encoder_mask, with_kwargs=True)
        else:
            model.register_forward_pre_hook(self.prepend, with_kwargs=True)
        model.register_forward_hook(self.trim)

    def prepend(self, model: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        """Forward pre-hook (``with_kwargs=True``): the model's inputs with the prompt in front."""
        if not self.active:
            self._full_length = None  # nothing prepended: `trim` leaves the outputs alone
            return None
        inputs = {**dict(zip(self.arg_names, args, strict=False)), **kwargs}
        past = _cache_length(inputs)
        if past > 0:
            return (), self._continue_cached(inputs, past)
        inputs = self._with_prompt(model, inputs)
        if not self.encoder_decoder:  # enc-dec labels are decoder targets, not aligned with the encoder input
            _prepend(inputs, "labels", self.num_virtual_tokens, -100)
        n, length = self.num_virtual_tokens, inputs["inputs_embeds"].shape[1] - self.num_virtual_tokens
        if inputs.get("position_ids") is not None:
            positions = inputs["position_ids"]
            start = torch.arange(n, device=positions.device, dtype=positions.dtype).expand(positions.shape[0], -1)
            inputs["position_ids"] = torch.cat([start, positions + n], dim=1)
        elif self.mask_positions:
            # Decoders: count positions along the mask (as generate() does), so left padding does not move the text
            # away from the prompt; with right padding these are the default positions.
            inputs["position_ids"] = positions_along_mask(inputs, length + n, offset=0)[0]
        return (), inputs

    def _with_prompt(self, module: nn.Module, inputs: dict[str, Any]) -> dict[str, Any]:
        """``inputs`` with the prompt in front of the embeddings, the mask and the token types."""
        if inputs.get("input_ids") is None and inputs.get("inputs_embeds") is None:
            raise UserInputError("prompt tuning needs input_ids or inputs_embeds in the call — pass the input tokens")
        n = self.num_virtual_tokens
        embeds = inputs.pop("input_ids", None)
        embeds = module.get_input_embeddings()(embeds) if embeds is not None else inputs["inputs_embeds"]
        batch, length = embeds.shape[:2]
        self._check_length(length + n)
        prompt = self.prompt.to(device=embeds.device, dtype=embeds.dtype).expand(batch, -1, -1)
        inputs["inputs_embeds"] = torch.cat([prompt, embeds], dim=1)
        mask = inputs.get("attention_mask")
        if mask is None or mask.shape[-1] == length:  # enc-dec: the model-level hook may have extended it already
            _prepend(inputs, "attention_mask", n, 1)
        _prepend(inputs, "token_type_ids", n, 0)
        self._full_length = length + n
        return inputs

    def _continue_cached(self, inputs: dict[str, Any], past: int) -> dict[str, Any]:
        """A decoding step after the cache holds the prompt: only the mask and explicit positions move by N."""
        n = self.num_virtual_tokens
        self._full_length = None
        tokens = inputs.get("input_ids") if inputs.get("input_ids") is not None else inputs.get("inputs_embeds")
        length = tokens.shape[1]
        self._check_length(past + length)
        mask = inputs.get("attention_mask")
        if mask is not None:
            if mask.dim() != 2 or mask.shape[1] + n != past + length:
                raise UserInputError(f"prompt tuning with a KV cache of {past} positions (incl. {n} virtual tokens) "
                                     f"and {length} new tokens needs a 2-D attention_mask over {past + length - n} "
                                     f"positions (without the prompt), got shape {tuple(mask.shape)}")
            _prepend(inputs, "attention_mask", n, 1)
        if inputs.get("position_ids") is not None:
            inputs["position_ids"] = inputs["position_ids"] + n
        elif self.mask_positions:
            inputs["position_ids"] = positions_along_mask(inputs, length, offset=0)[0]
        return inputs

    def prepend_to_encoder(self, encoder: nn.Module, args: tuple, kwargs: dict[str, Any]
                           ) -> tuple[tuple, dict[str, Any]]:
        """Encoder pre-hook (encoder-decoders): the prompt in front of the encoder input, however it is called."""
        if not self.active:
            self._full_length = None  # nothing prepended: `trim` leaves the outputs alone
            return None
        inputs = {**dict(zip(self.encoder_arg_names, args, strict=False)), **kwargs}
        return (), self._with_prompt(encoder, inputs)

    def extend_encoder_mask(self, model: nn.Module, args: tuple, kwargs: dict[str, Any]
                            ) -> tuple[tuple, dict[str, Any]]:
        """Model pre-hook (encoder-decoders): the encoder mask covers the prompt too (the decoder cross-attends to
        it); with ``encoder_outputs`` (``generate()``) the encoder has already prepended the prompt."""
        if not self.active:
            self._full_length = None  # nothing prepended: `trim` leaves the outputs alone
            return None
        inputs = {**dict(zip(self.arg_names, args, strict=False)), **kwargs}
        mask, n = inputs.get("attention_mask"), self.num_virtual_tokens
        source = inputs.get("input_ids") if inputs.get("input_ids") is not None else inputs.get("inputs_embeds")
        if source is not None:
            length = source.shape[1]
        elif inputs.get("encoder_outputs") is not None:
            length = inputs["encoder_outputs"][0].shape[1] - n
        else:
            raise UserInputError("prompt tuning needs input_ids, inputs_embeds or encoder_outputs in the call")
        if mask is not None and mask.shape[-1] == length:
            _prepend(inputs, "attention_mask", n, 1)
        self._full_length = length + n
        return (), inputs

    def trim(self, model: nn.Module, args: tuple, output: Any) -> Any:
        """Forward hook: token-aligned outputs without the N prompt positions."""
        if not isinstance(output, ModelOutput):
            raise UserInputError("prompt tuning trims the model's outputs and needs return_dict=True (a ModelOutput), "
                                 f"got {type(output).__name__}")
        n, full = self.num_virtual_tokens, self._full_length
        self._full_length = None
        if full is None:  # a cached decoding step: nothing was prepended
            return output
        for key in _ENCODER_OUTPUTS if self.encoder_decoder else _TOKEN_OUTPUTS:
            value = output.get(key)
            if isinstance(value, torch.Tensor) and value.shape[1] == full:
                output[key] = value[:, n:]
            elif isinstance(value, tuple):
                output[key] = tuple(h[:, n:] if h.shape[1] == full else h for h in value)
        return output

    def _check_length(self, total: int) -> None:
        n = self.num_virtual_tokens
        if self.max_length is not None and total > self.max_length:
            raise UserInputError(f"prompt tuning prepends {n} virtual tokens to inputs of {total - n} tokens: {total}"
                                 f" positions, more than the {self.max_length} that model_type '{self.model_type}' "
                                 f"has (max_position_embeddings) — truncate inputs to {self.max_length - n} tokens "
                                 "or use fewer virtual tokens")


def _arg_names(module: nn.Module) -> list[str]:
    params = inspect.signature(module.forward).parameters.values()
    return [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def _cache_length(inputs: dict[str, Any]) -> int:
    """Positions already in the KV cache (0 without one, or for an empty cache that this call fills)."""
    past = kv_cache(inputs)
    if past is None:
        return 0
    if not hasattr(past, "get_seq_length"):
        raise UserInputError(f"prompt tuning needs a transformers Cache as the KV cache (past_key_values), got "
                             f"{type(past).__name__} — pass a DynamicCache (legacy tuples are not supported)")
    return int(past.get_seq_length())


def _prepend(inputs: dict[str, Any], key: str, n: int, value: int) -> None:
    tensor = inputs.get(key)
    if tensor is not None:
        inputs[key] = torch.cat([tensor.new_full((tensor.shape[0], n), value), tensor], dim=1)


class PromptTuning(Strategy):
    """Prompt tuning: trainable virtual tokens in front of every input.

    Args:
        num_virtual_tokens: number N of virtual tokens (each a trainable embedding vector).
        init_text: initialise the prompt with the embeddings of this text's tokens, repeated or truncated to N
            (Lester et al. find this better than random); default: random normal with the embedding matrix's std.
        tokenizer: the tokenizer for ``init_text``: an alias, folder or hub id (usually the backbone's name).
    """

    peft_type = "PROMPT_TUNING"  # `peft_export` writes the prompt as PEFT's prompt_embeddings

    def __init__(self, num_virtual_tokens: int = 20, init_text: str | None = None,
                 tokenizer: str | None = None) -> None:
        if num_virtual_tokens < 1:
            raise UserInputError(f"prompt tuning needs num_virtual_tokens >= 1, got {num_virtual_tokens}")
        check_init_text("prompt tuning", init_text, tokenizer)
        self.num_virtual_tokens = num_virtual_tokens
        self.init_text = init_text
        self.tokenizer = tokenizer

    def apply(self, model: nn.Module) -> None:
        if any(isinstance(m, PromptEmbedding) for m in model.children()):
            raise UserInputError("the model already has a prompt-tuning prompt — apply PromptTuning once")
        embedding = model.get_input_embeddings()
        layer = PromptEmbedding(self._initial_prompt(embedding), model)
        model.prompt_tuning = layer.to(embedding.weight.device)
        layer.hooks(model)

    def export_state(self, model: nn.Module, adapter: str | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
        """The stored prompt replaces any initialisation: a loaded adapter needs no ``init_text`` tokenizer."""
        hparams, state = super().export_state(model, adapter)
        hparams["init_args"] |= {"init_text": None, "tokenizer": None}
        return hparams, state

    @torch.no_grad()
    def _initial_prompt(self, embedding: nn.Module) -> torch.Tensor:
        n, weight = self.num_virtual_tokens, embedding.weight
        if self.init_text is None:
            return torch.randn(n, weight.shape[1], device=weight.device) * weight.float().std()
        ids = init_token_ids("prompt tuning", self.init_text, self.tokenizer, n, weight.shape[0])
        return embedding(torch.tensor(ids, device=weight.device)).float()
