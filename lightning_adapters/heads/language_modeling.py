r"""Language modelling on raw text: masked LM for encoders, causal LM for decoders — to train a *domain* adapter.

A domain adapter learns a domain's text (earnings calls, support chats) without labels; a task adapter then starts
from it (``AdapterModule(adapters={"finance": folder}, init_from="finance")``) or is stacked on it. So this head runs
on the bare base model, as every task head but generation does: the domain adapter sits in the same places, under the
same names, with the same base fingerprint as a classification or NER adapter of that base, and loads beside one.

Tokens are predicted through the frozen input embeddings (the output layer of BERT, GPT-2, SmolLM2, Qwen2.5-0.5B and
Llama-3.2-1B is tied to them), so no vocabulary-by-hidden weight is trained or stored:

- **masked** (encoders; BERT's recipe): ``mask_probability`` of the non-special tokens of each row are chosen, and at
  least one; of those, 80 % become the mask token, 10 % a random token, 10 % stay. A trainable transform (dense,
  the model's activation, LayerNorm: BERT's ``cls.predictions.transform``) and an output bias are the head's weights;
  a sentence-embedding checkpoint such as all-MiniLM-L6-v2 ships none, so they start fresh. Loss: mean cross-entropy
  over the chosen tokens.
- **causal** (decoders): each position predicts the next token, ``L = -(1/|T|) sum_t log p(x_{t+1} | x_{<=t})`` over
  the non-pad positions; the logits equal the model's own ``*ForCausalLM`` logits. No new weights.

Masks are drawn from the global RNG in training (seeded by ``seed_everything``; checkpoints keep the RNG state, so a
resumed run draws the same masks) and from a generator seeded by ``eval_seed`` and the batch's token ids in
evaluation and prediction, so a validation loss is comparable from epoch to epoch and a row's score does not depend on
what else is in its batch. Metrics: ``perplexity`` (``exp`` of the mean token loss) and ``accuracy`` (share of
predicted tokens right). Predict writes each row's mean loss over its predicted tokens (``nll``) and their count
(``tokens``): every next token for causal LM — a domain LM's score of the text, e.g. for cross-entropy-difference
data selection — and the evaluation mask's tokens (about 15 %) for masked LM.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.aggregation import MeanMetric
from transformers import PretrainedConfig
from transformers.activations import ACT2FN

from lightning_adapters.backbone import is_decoder_only
from lightning_adapters.errors import UserInputError
from lightning_adapters.heads.base import EpochMetrics, Stage, TaskHead, backbone_inputs, with_meta
from lightning_adapters.text_metrics import Perplexity

Objective = Literal["auto", "masked", "causal"]
_TIED_MODELS = "BERT, GPT-2, SmolLM2, Qwen2.5-0.5B, Llama-3.2-1B"


def text_seed(token_ids: list[int], eval_seed: int) -> int:
    """A seed from a row's token ids alone (not its padding or batch-mates): evaluation masks are a function of the
    text."""
    value = eval_seed
    for token in token_ids:
        value = (value * 1_000_003 + token + 1) % 2**61
    return value


def _activation(config: PretrainedConfig) -> nn.Module:
    """The model's own activation (BERT's transform uses ``hidden_act``), GELU where the config names none."""
    act = getattr(config, "hidden_act", "gelu")
    return ACT2FN[act] if isinstance(act, str) else act


class LanguageModelingHead(TaskHead):
    """Masked (encoders) or causal (decoders) language modelling, for domain adapters trained on raw text.

    Args:
        objective: ``masked``, ``causal`` or ``auto`` (masked for encoders, causal for decoders).
        mask_probability: masked LM: share of each row's non-special tokens that are predicted.
        eval_seed: masked LM: seed of the evaluation and prediction masks (with each row's token ids).
    """

    uses_tokenizer = True
    reads = {"input_ids": "token ids", "attention_mask": "token mask"}

    def __init__(self, objective: Objective = "auto", mask_probability: float = 0.15, eval_seed: int = 0) -> None:
        super().__init__()
        if objective not in ("auto", "masked", "causal"):
            raise UserInputError(f"unknown objective '{objective}' — use auto, masked or causal")
        if not 0.0 < mask_probability < 1.0:
            raise UserInputError(f"mask_probability must be in (0, 1), got {mask_probability} — BERT uses 0.15")
        self.objective, self.mask_probability, self.eval_seed = objective, mask_probability, eval_seed
        self._objective = objective

    # ---- building --------------------------------------------------------------------------------------------
    def build(self, config: PretrainedConfig, label_names: list[str] | None, tokenizer: Any = None) -> None:
        if getattr(config, "is_encoder_decoder", False):
            raise UserInputError(f"{config.model_type} is an encoder-decoder, which pretrains by span corruption, not "
                                 "masked or causal LM — train its domain adapter as a generation task, or use an "
                                 "encoder or decoder")
        decoder = is_decoder_only(config)
        objective = ("causal" if decoder else "masked") if self.objective == "auto" else self.objective
        if objective == "masked" and decoder:
            raise UserInputError(f"objective masked needs bidirectional attention; {config.model_type} is a decoder "
                                 "— use objective causal (or auto)")
        if objective == "causal" and not decoder:
            raise UserInputError(f"objective causal on {config.model_type}, an encoder, would see the token it "
                                 "predicts — use objective masked (or auto)")
        if objective == "causal" and not getattr(config, "tie_word_embeddings", True):
            raise UserInputError(f"{config.model_type} has an output layer of its own (tie_word_embeddings: false), "
                                 "which the base model this head runs on leaves out — use a model whose output is "
                                 f"tied to its input embeddings ({_TIED_MODELS})")
        if objective == "masked" and getattr(tokenizer, "mask_token_id", None) is None:
            raise UserInputError(f"the tokenizer of this {config.model_type} has no mask token, which masked LM "
                                 "needs — use a tokenizer with one (BERT's [MASK])")
        self._objective = objective
        self.special_ids = sorted(set(tokenizer.all_special_ids))
        self.mask_token_id = tokenizer.mask_token_id
        self.vocab_size = config.vocab_size
        if objective == "masked":
            eps = getattr(config, "layer_norm_eps", 1e-12)
            self.transform = nn.Sequential(nn.Linear(config.hidden_size, config.hidden_size), _activation(config),
                                           nn.LayerNorm(config.hidden_size, eps=eps))
            self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    @property
    def masked(self) -> bool:
        return self._objective == "masked"

    # ---- masking ---------------------------------------------------------------------------------------------
    def mask(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, generator: torch.Generator | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs with the chosen tokens corrupted, labels: the original ids at chosen tokens, -100 elsewhere).

        ``generator``: None draws from the global RNG (training); else a CPU generator (evaluation)."""
        device = input_ids.device
        draw = (lambda *shape: torch.rand(*shape, device=device)) if generator is None else \
            (lambda *shape: torch.rand(*shape, generator=generator).to(device))
        maskable = attention_mask.bool() & ~torch.isin(input_ids, torch.tensor(self.special_ids, device=device))
        scores = draw(*input_ids.shape).masked_fill(~maskable, 2.0)
        chosen = (scores < self.mask_probability) & maskable
        # every row with a maskable token predicts at least one: a short row would otherwise add no loss term
        lowest = scores.argmin(dim=1, keepdim=True)
        chosen |= torch.zeros_like(chosen).scatter(1, lowest, True) & maskable
        labels = input_ids.masked_fill(~chosen, -100)
        action = draw(*input_ids.shape)
        random_ids = (draw(*input_ids.shape) * self.vocab_size).long().clamp(max=self.vocab_size - 1)
        corrupted = torch.where(chosen & (action < 0.8), self.mask_token_id, input_ids)
        corrupted = torch.where(chosen & (action >= 0.8) & (action < 0.9), random_ids, corrupted)
        return corrupted, labels

    def eval_mask(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`mask` drawn for each row's real tokens only, from a generator seeded by ``eval_seed`` and those tokens:
        the same text gets the same mask whatever its padding side, width or batch."""
        corrupted, labels = input_ids.clone(), torch.full_like(input_ids, -100)
        for row, (ids, keep) in enumerate(zip(input_ids, attention_mask.bool(), strict=True)):
            real = ids[keep]
            generator = torch.Generator().manual_seed(text_seed(real.tolist(), self.eval_seed))
            row_inputs, row_labels = self.mask(real[None], torch.ones_like(real)[None], generator)
            corrupted[row, keep], labels[row, keep] = row_inputs[0], row_labels[0]
        return corrupted, labels

    # ---- forward and loss ------------------------------------------------------------------------------------
    def forward(self, backbone: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits of the predicted positions, their target ids, predicted positions per row): only those positions
        are projected onto the vocabulary, which keeps a (batch, seq, vocab) tensor out of memory."""
        inputs = backbone_inputs(batch, backbone)
        mask = batch["attention_mask"].bool()
        if self.masked:
            masking = self.mask if self.training else self.eval_mask
            inputs["input_ids"], targets = masking(batch["input_ids"], batch["attention_mask"])
            keep = targets != -100
        else:  # position t predicts token t + 1, where both are text; positions count text tokens (left padding)
            targets, keep = batch["input_ids"][:, 1:], mask[:, 1:] & mask[:, :-1]
            inputs["position_ids"] = (mask.long().cumsum(1) - 1).clamp(min=0)
        hidden = backbone(**inputs).last_hidden_state
        if not self.masked:
            hidden = hidden[:, :-1]
        return self.logits(backbone, hidden[keep]), targets[keep], keep.sum(dim=1)

    def logits(self, backbone: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        embeddings = backbone.get_input_embeddings().weight
        if self.masked:
            hidden = self.transform(hidden.to(self.bias.dtype))
            return F.linear(hidden, embeddings.to(hidden.dtype), self.bias)
        return F.linear(hidden, embeddings)

    def loss(self, outputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor], batch: dict[str, Any]) -> torch.Tensor:
        logits, targets, _ = outputs
        if not len(targets):  # e.g. one-token texts: no term, not a NaN mean over nothing (the graph is kept)
            return logits.sum() * 0.0
        return F.cross_entropy(logits.float(), targets)

    def monitor(self) -> tuple[str, str]:
        return "perplexity", "min"

    def metrics(self) -> EpochMetrics:
        return EpochMetrics({"perplexity": Perplexity(), "accuracy": MeanMetric()}, compute_groups=False)

    def update_metrics(self, metrics: EpochMetrics, outputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                       batch: dict[str, Any], backbone: nn.Module, stage: Stage) -> None:
        logits, targets, _ = outputs
        if not len(targets):
            return
        metrics["perplexity"].update(F.cross_entropy(logits.float(), targets, reduction="sum"), len(targets))
        metrics["accuracy"].update((logits.argmax(-1) == targets).float().mean(), weight=len(targets))

    def predict(self, backbone: nn.Module, batch: dict[str, Any]) -> list[dict[str, Any]]:
        logits, targets, counts = self(backbone, batch)
        nll = F.cross_entropy(logits.float(), targets, reduction="none")
        texts = batch.get("text") or [None] * len(counts)
        rows = []
        for text, row_nll, count in zip(texts, nll.split(counts.tolist()), counts.tolist(), strict=True):
            mean = round(float(row_nll.mean()), 6) if count else None
            rows.append({"text": text, "nll": mean, "tokens": count})
        return with_meta(rows, batch)
