r"""Prefix tuning: N trainable keys and values in front of every attention layer's own.

    head_i(x) = softmax(q_i [P_k^i; K_i]^T s + [0; M]) [P_v^i; V_i]     P_k^i, P_v^i in R^{N x d_head} trainable

During training the prefixes come from a reparameterisation (Li & Liang): ``P = MLP(E)`` with a trainable
``E in R^{N x d_model}`` and ``MLP = Linear(d_model, hidden) -> tanh -> Linear(hidden, sum_i 2 d_i)`` shared by all
layers. `PrefixTuning.fold` replaces the MLP by the plain tensor it computes (bit-identical outputs) for export.
Prefix tuning is *not* the identity at initialisation: the random prefixes already take attention mass. With
``init_text`` they start as the keys and values the frozen model computes for a real text, as if that text came
before every input (Li & Liang's initialisation from real words).

The prefixes reach the layers through `prefix_attention` (one registered attention function, independent of
transformers' cache classes; see there). This file holds what is learned and how: `PrefixEncoder`, the
strategy and `capture_key_values`.

Positions: prefix keys carry no position of their own (no RoPE is applied to them, T5 adds no relative bias, DeBERTa
scores them by content only: `prefix_disentangled`). In decoders the input moves to positions ``N..N+s-1`` (counted
along the attention mask), as when the paper's GPT-2 code and PEFT pass the prefix as a KV cache; encoders keep
``0..s-1``. So a prefix taken from a real text P (`capture_key_values`) reproduces the run on ``[P; x]`` exactly for
decoders, and for encoders the run in which P does not attend to x with x at positions ``N..`` (pass those
``position_ids``).

Paper: https://arxiv.org/abs/2101.00190 (Li & Liang 2021, "Prefix-Tuning: Optimizing Continuous Prompts for
Generation").
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn

from lightning_adapters.backbone import is_decoder_only
from lightning_adapters.errors import UserInputError
from lightning_adapters.strategies.base import AdapterLayer, Strategy
from lightning_adapters.strategies.layers import Layers, check_layers
from lightning_adapters.strategies.prefix_attention import (
    ATTENTION_NAME,
    installed_slots,
    probe_inputs,
    route_attention,
    run_without_prefix,
    trace_key_values,
)
from lightning_adapters.strategies.virtual_tokens import (
    check_init_text,
    init_token_ids,
    max_input_length,
    positions_along_mask,
)

__all__ = ["ATTENTION_NAME", "PrefixEncoder", "PrefixTuning", "capture_key_values", "prefix_encoder"]


class PrefixEncoder(AdapterLayer):
    """All layers' prefixes: a plain ``N x sum_i 2 d_i`` tensor, or the reparameterisation MLP that computes it.

    ``shapes[i] = (heads, key_dim, value_dim)`` of attention layer ``i``; its slice of the flat prefix holds the
    keys then the values, head-major.
    """

    def __init__(self, num_virtual_tokens: int, shapes: list[tuple[int, int, int]], reparameterize: bool,
                 hidden: int, width: int) -> None:
        super().__init__()
        self.num_virtual_tokens, self.shapes, self.reparameterize = num_virtual_tokens, shapes, reparameterize
        self.active = True  # False while `capture_key_values` runs the model without prefixes
        self.arg_names: list[str] = []  # the model's positional forward arguments, and its longest input
        self.max_length: int | None = None
        sizes = [heads * (key_dim + value_dim) for heads, key_dim, value_dim in shapes]
        self.offsets = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
        if reparameterize:
            self.embedding = nn.Parameter(torch.randn(num_virtual_tokens, width))
            self.mlp_in = nn.Linear(width, hidden)
            self.mlp_out = nn.Linear(hidden, self.offsets[-1])
        else:
            self.prefix = nn.Parameter(torch.randn(num_virtual_tokens, self.offsets[-1]))

    def flat(self, index: int) -> torch.Tensor:
        """Layer ``index``'s ``N x 2 d_i`` slice; with the MLP, only that slice of its output layer is computed."""
        start, end = self.offsets[index], self.offsets[index + 1]
        if not self.reparameterize:
            return self.prefix[:, start:end]
        hidden = torch.tanh(self.mlp_in(self.embedding))
        return F.linear(hidden, self.mlp_out.weight[start:end], self.mlp_out.bias[start:end])

    def key_value(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``index``'s prefix keys and values, each ``(1, heads, N, dim)``."""
        heads, key_dim, value_dim = self.shapes[index]
        keys, values = self.flat(index).split([heads * key_dim, heads * value_dim], dim=-1)
        n = self.num_virtual_tokens
        return (keys.view(n, heads, key_dim).transpose(0, 1)[None],
                values.view(n, heads, value_dim).transpose(0, 1)[None])

    def place_after_prefix(self, model: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        """Forward pre-hook for decoders: without explicit ``position_ids`` the input sits at positions ``N..``
        after the prefix (counted along the attention mask, so left padding changes nothing), as if the prefix were
        a KV cache — the paper's and PEFT's semantics."""
        if not self.active:
            return None
        inputs = {**dict(zip(self.arg_names, args, strict=False)), **kwargs}
        tokens = inputs.get("input_ids") if inputs.get("input_ids") is not None else inputs.get("inputs_embeds")
        if inputs.get("position_ids") is None and tokens is not None:
            positions, end = positions_along_mask(inputs, tokens.shape[1], self.num_virtual_tokens)
            if self.max_length is not None and end > self.max_length:
                raise UserInputError(f"prefix tuning places {end - self.num_virtual_tokens} tokens after "
                                     f"{self.num_virtual_tokens} prefix positions: {end} positions, more than the "
                                     f"{self.max_length} of this model (max_position_embeddings) — truncate inputs to "
                                     f"{self.max_length - self.num_virtual_tokens} tokens or use fewer virtual tokens")
            inputs["position_ids"] = positions
        return (), inputs

    @torch.no_grad()
    def folded(self) -> torch.Tensor:
        """The plain prefix tensor these weights compute (bit-identical to what `flat` feeds the layers)."""
        return torch.cat([self.flat(i) for i in range(len(self.shapes))], dim=-1).detach().clone()

    def fold(self) -> None:
        """Replace the reparameterisation MLP by the prefix tensor it computes (for export; not to keep training)."""
        prefix = self.folded()
        for name in ("embedding", "mlp_in", "mlp_out"):
            delattr(self, name)
        self.prefix = nn.Parameter(prefix)
        self.reparameterize = False

    @torch.no_grad()
    def set_key_values(self, key_values: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Make the prefixes equal per-layer ``(keys, values)`` of shape ``([1,] heads, N, dim)``, e.g. taken from a
        real text with `capture_key_values` (Li & Liang's initialisation from real words).

        With the reparameterisation the MLP's output layer is solved for (least squares, minimum norm) so that
        ``MLP(E)`` equals them. That is exact once ``hidden >= N - 1``; ``hidden >= 2 N`` is required so that the
        fit is well conditioned (near ``hidden = N`` the solved weights grow ~100-fold and training turns fragile)."""
        n = self.num_virtual_tokens
        if len(key_values) != len(self.shapes):
            raise UserInputError(f"prefix tuning has {len(self.shapes)} attention layers but {len(key_values)} "
                                 "key/value pairs were given — capture them from this model")
        parts = [t.reshape(-1, n, t.shape[-1]).transpose(0, 1).reshape(n, -1) for pair in key_values for t in pair]
        target = torch.cat(parts, dim=-1)
        if not self.reparameterize:
            self.prefix.copy_(target)
            return
        if self.mlp_in.out_features < 2 * n:
            raise UserInputError(f"prefix tuning cannot fit {n} prefix positions through an MLP of width "
                                 f"{self.mlp_in.out_features} stably — use hidden >= {2 * n} or reparameterize=False")
        hidden = torch.tanh(self.mlp_in(self.embedding)).double()
        design = torch.cat([hidden, torch.ones(n, 1, dtype=hidden.dtype, device=hidden.device)], dim=1)
        solution = torch.linalg.pinv(design) @ target.double()  # (hidden + 1) x width: weight^T over bias
        self.mlp_out.weight.copy_(solution[:-1].T)
        self.mlp_out.bias.copy_(solution[-1])


class PrefixTuning(Strategy):
    """Prefix tuning: trainable keys and values prepended in every attention layer.

    Args:
        num_virtual_tokens: number N of prefix positions per attention layer.
        reparameterize: compute the prefixes with an MLP from N trainable embeddings (Li & Liang: more stable
            training); `fold` turns them into plain tensors for export.
        hidden: width of the reparameterisation MLP.
        init_text: start from the keys and values the frozen model computes for this text's tokens (repeated or
            truncated to N) instead of random prefixes — as if that text came before every input (Li & Liang's
            initialisation from real words); default: random.
        tokenizer: the tokenizer for ``init_text``: an alias, folder or hub id (usually the backbone's name).
        layers: which transformer layers get prefixes — indices, slices, ``first k`` / ``last k``
            (`lightning_adapters.strategies.layers`); default: every layer.
    """

    def __init__(self, num_virtual_tokens: int = 20, reparameterize: bool = True, hidden: int = 512,
                 init_text: str | None = None, tokenizer: str | None = None, layers: Layers = None) -> None:
        if num_virtual_tokens < 1 or hidden < 1:
            raise UserInputError(f"prefix tuning needs num_virtual_tokens >= 1 and hidden >= 1, got "
                                 f"{num_virtual_tokens} and {hidden}")
        check_init_text("prefix tuning", init_text, tokenizer)
        check_layers(layers, "prefix tuning")
        self.num_virtual_tokens = num_virtual_tokens
        self.reparameterize = reparameterize
        self.hidden = hidden
        self.init_text = init_text
        self.tokenizer = tokenizer
        self.layers = layers

    def apply(self, model: nn.Module) -> None:
        if any(isinstance(m, PrefixEncoder) for m in model.children()):
            raise UserInputError("the model already has prefix-tuning prefixes — apply PrefixTuning once")
        if next(model.parameters()).device.type == "meta":  # shapes come from a forward pass on real weights
            raise UserInputError("prefix tuning needs the model's real weights, not the meta device — load the model "
                                 "before applying the strategy")
        slots = route_attention(model, self.layers)
        shapes = [(k.shape[1], k.shape[-1], v.shape[-1]) for k, v in trace_key_values(model, slots)]
        device = next(model.parameters()).device
        encoder = PrefixEncoder(self.num_virtual_tokens, shapes, self.reparameterize, self.hidden,
                                model.config.hidden_size).to(device)
        model.prefix_tuning = encoder
        for slot in slots:
            slot.encoder = encoder
        params = inspect.signature(model.forward).parameters.values()
        encoder.arg_names = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        encoder.max_length = max_input_length(model.config)
        if is_decoder_only(model.config) and "position_ids" in encoder.arg_names:
            model.register_forward_pre_hook(encoder.place_after_prefix, with_kwargs=True)
        if self.init_text is not None:
            ids = init_token_ids("prefix tuning", self.init_text, self.tokenizer, self.num_virtual_tokens,
                                 model.get_input_embeddings().num_embeddings)
            encoder.set_key_values(capture_key_values(model, **probe_inputs(model, torch.tensor([ids], device=device))))

    def fold(self, model: nn.Module) -> None:
        """Fold the reparameterisation MLP into plain prefixes in place; `hparams` then say reparameterize=False,
        so `save_adapter` writes the small folded form and `load_adapter` reproduces the logits exactly."""
        encoder = prefix_encoder(model)
        if encoder.reparameterize:
            encoder.fold()
        self.reparameterize = False

    def export_state(self, model: nn.Module, adapter: str | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
        """The folded (hparams, adapter weights) of ``model`` without changing it: what an export writes."""
        hparams = self.hparams()
        hparams["init_args"] |= {"reparameterize": False, "init_text": None, "tokenizer": None}  # weights replace init
        return hparams, {"prefix_tuning.prefix": prefix_encoder(model).folded()}


def prefix_encoder(model: nn.Module) -> PrefixEncoder:
    encoder = getattr(model, "prefix_tuning", None)
    if not isinstance(encoder, PrefixEncoder):
        raise UserInputError("the model has no prefix-tuning prefixes — apply PrefixTuning first")
    return encoder


def capture_key_values(model: nn.Module, **inputs: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The keys and values each prefixed attention layer of ``model`` computes for ``inputs``, prefixes switched off,
    in prefix order: e.g. ``encoder.set_key_values(capture_key_values(model, input_ids=real_text_ids))``."""
    prefix_encoder(model)  # refuse a model without prefixes, with the usual message
    modes = {module: module.training for module in model.modules()}
    model.eval()  # dropout off: the keys and values the model computes, not one random draw of them
    try:
        return run_without_prefix(model, installed_slots(model), inputs)
    finally:
        for module, training in modes.items():
            module.training = training
