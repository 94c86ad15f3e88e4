r"""Text generation (summarisation, dialogue): the frozen LM head of a causal or encoder-decoder model.

The head adds no weights: only the strategy's adapter is trained, and the loss is the mean token cross-entropy over the
label tokens (the target text; everything else is ``-100``):

    L = -(1/|T|) sum_{t in T} log p(y_t | y_<t, x)

Decoder-only models read ``[prompt; target]`` and predict token ``t+1`` from position ``t`` (labels shifted by one);
encoder-decoders read the source and predict the target with teacher forcing. Batch contract (the seq2seq and dialogue
DataModules produce it):

- always: ``input_ids``, ``attention_mask``, ``labels`` (decoder-only: the shape of ``input_ids``; encoder-decoder:
  the target ids, padded with -100);
- evaluation/prediction also: ``prompt_input_ids``/``prompt_attention_mask`` (decoder-only, LEFT-padded prompts that
  end where generation starts; encoder-decoders generate from ``input_ids``), ``references`` (one string or a list of
  strings per example, or None), ``sources`` (texts echoed in predictions), optional ``meta`` (dicts that start
  the prediction rows: the row ``id`` and any analysis columns).

Generation is greedy by default (``num_beams``, ``length_penalty``, sampling and ``no_repeat_ngram_size`` are options).
Validation generates only with ``generate_during_validation`` (slow on CPU); test always does. Metrics: ROUGE,
BLEU, perplexity (see `lightning_adapters.text_metrics`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from threading import Thread
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    GenerationConfig,
    PretrainedConfig,
    TextIteratorStreamer,
)

from lightning_adapters.backbone import is_decoder_only
from lightning_adapters.data.generation_collator import GenerationCollator  # noqa: F401 — moved to the data side
from lightning_adapters.errors import UserInputError
from lightning_adapters.heads.base import EpochMetrics, Stage, TaskHead, with_meta
from lightning_adapters.text_metrics import BLEU, ROUGE, Perplexity

METRICS = {"rouge": ROUGE, "bleu": BLEU, "perplexity": Perplexity}
_TEXT_METRICS = ("rouge", "bleu")
_CONFIG_KWARGS = ("revision", "trust_remote_code", "gguf_file")


class AutoModelForGeneration:
    """``from_pretrained`` loading `AutoModelForSeq2SeqLM` for encoder-decoder configs, else `AutoModelForCausalLM`."""

    @classmethod
    def from_pretrained(cls, path: str, **kwargs: Any) -> nn.Module:
        config = AutoConfig.from_pretrained(path, **{k: v for k, v in kwargs.items() if k in _CONFIG_KWARGS})
        encoder_decoder = getattr(config, "is_encoder_decoder", False)
        if not (encoder_decoder or is_decoder_only(config)):  # BERT & co. load as LM heads but cannot generate
            raise UserInputError(f"'{path}' ({config.model_type}) cannot generate text: it is neither a decoder nor "
                                 "an encoder-decoder — use a decoder (GPT-2, Llama, ...) or encoder-decoder (T5, BART)")
        return (AutoModelForSeq2SeqLM if encoder_decoder else AutoModelForCausalLM).from_pretrained(path, **kwargs)


def label_nll(logits: torch.Tensor, labels: torch.Tensor, causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of token NLL, number of label tokens); causal LMs predict token t+1 at position t."""
    if causal:
        logits, labels = logits[:, :-1], labels[:, 1:]
    keep = labels != -100
    # Only the label positions are upcast: the full (batch, seq, vocab) logits in fp32 would dominate memory.
    nll = F.cross_entropy(logits[keep].float(), labels[keep], reduction="sum")
    return nll, keep.sum()


class GenerationHead(TaskHead):
    """Generate text with the (frozen) language-model head; no new weights.

    Args:
        max_new_tokens: most tokens generated per example.
        num_beams: beam width (1: greedy or sampling).
        length_penalty: beam search: exponent on the length in the score (> 1 favours longer outputs).
        do_sample: sample instead of greedy/beam search.
        temperature: sampling temperature (only with ``do_sample``).
        top_p: nucleus-sampling mass (only with ``do_sample``).
        no_repeat_ngram_size: forbid repeating n-grams of this size (0: off).
        metrics: any of ``rouge``, ``bleu``, ``perplexity``.
        generate_during_validation: also generate (and score ROUGE/BLEU) in validation, not only in test.
        rouge_stemmer: Porter-stem words before ROUGE matching.
    """

    auto_class = AutoModelForGeneration
    uses_tokenizer = True
    reads = {"input_ids": "token ids", "attention_mask": "token mask", "labels": "target token ids",
             "prompt_input_ids": "prompt token ids", "prompt_attention_mask": "prompt token mask",
             "references": "reference texts", "sources": "source texts"}

    def __init__(self, max_new_tokens: int = 64, num_beams: int = 1, length_penalty: float = 1.0,
                 do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0, no_repeat_ngram_size: int = 0,
                 metrics: list[str] | None = None, generate_during_validation: bool = False,
                 rouge_stemmer: bool = True) -> None:
        super().__init__()
        metrics = ["rouge", "perplexity"] if metrics is None else list(metrics)
        unknown = [m for m in metrics if m not in METRICS]
        if unknown:
            raise UserInputError(f"unknown generation metric(s) {unknown} — use any of {', '.join(METRICS)}")
        for name, value, low in (("max_new_tokens", max_new_tokens, 1), ("num_beams", num_beams, 1),
                                 ("no_repeat_ngram_size", no_repeat_ngram_size, 0)):
            if value < low:
                raise UserInputError(f"{name}={value} is out of range — use a value >= {low}")
        if do_sample and not (temperature > 0 and 0 < top_p <= 1):
            raise UserInputError(f"sampling needs temperature > 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
        self.max_new_tokens, self.num_beams, self.length_penalty = max_new_tokens, num_beams, length_penalty
        self.do_sample, self.temperature, self.top_p = do_sample, temperature, top_p
        self.no_repeat_ngram_size = no_repeat_ngram_size
        self.metric_names = metrics  # not `self.metrics`: that is the TaskHead method
        self.generate_during_validation, self.rouge_stemmer = generate_during_validation, rouge_stemmer
        self.tokenizer = None
        self.encoder_decoder = False

    def hparams(self) -> dict:
        # `metrics` is stored as metric_names (the name `metrics` is the TaskHead method), so map it back here.
        names = ("max_new_tokens", "num_beams", "length_penalty", "do_sample", "temperature", "top_p",
                 "no_repeat_ngram_size", "generate_during_validation", "rouge_stemmer")
        init_args = {name: getattr(self, name) for name in names}
        init_args["metrics"] = list(self.metric_names)
        return {"class_path": f"{type(self).__module__}.{type(self).__qualname__}", "init_args": init_args}

    def build(self, config: PretrainedConfig, label_names: list[str] | None, tokenizer: Any = None) -> None:
        if tokenizer is None:
            raise UserInputError("the generation head needs the backbone's tokenizer to decode text")
        self.tokenizer = tokenizer
        self.encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))

    def generation_config(self, backbone: nn.Module) -> GenerationConfig:
        """The decoding settings of this head (the model's own generation defaults are not used)."""
        eos = {self.tokenizer.eos_token_id} - {None}
        model_eos = getattr(getattr(backbone, "generation_config", None), "eos_token_id", None)
        eos |= set(model_eos if isinstance(model_eos, list) else [model_eos]) - {None}
        settings = dict(max_new_tokens=self.max_new_tokens, num_beams=self.num_beams, do_sample=self.do_sample,
                        pad_token_id=self.tokenizer.pad_token_id, eos_token_id=sorted(eos) or None,
                        no_repeat_ngram_size=self.no_repeat_ngram_size)
        if self.num_beams > 1:
            settings["length_penalty"] = self.length_penalty
        if self.do_sample:
            settings.update(temperature=self.temperature, top_p=self.top_p)
        if self.encoder_decoder:
            settings["decoder_start_token_id"] = backbone.config.decoder_start_token_id
        return GenerationConfig(**settings)

    # ---- training ----------------------------------------------------------------------------------------------
    def forward(self, backbone: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        if self.encoder_decoder:  # HF builds the decoder inputs by shifting the labels right (-100 -> pad)
            inputs["labels"] = batch["labels"]
        return backbone(**inputs).logits

    def loss(self, logits: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        nll, count = label_nll(logits, batch["labels"], causal=not self.encoder_decoder)
        return nll / count

    # ---- evaluation and prediction -----------------------------------------------------------------------------
    def monitor(self) -> tuple[str, str]:
        # Validation generates nothing unless asked (slow): judge by the reference's perplexity where it is computed.
        return ("perplexity", "min") if "perplexity" in self.metric_names else ("loss", "min")

    def metrics(self) -> EpochMetrics:
        built = {name: METRICS[name](use_stemmer=self.rouge_stemmer) if name == "rouge" else METRICS[name]()
                 for name in self.metric_names}
        return EpochMetrics(built, compute_groups=False)

    def update_metrics(self, metrics: EpochMetrics, logits: torch.Tensor, batch: dict[str, Any],
                       backbone: nn.Module, stage: Stage) -> None:
        names = set(metrics.keys(keep_base=True))
        if "perplexity" in names:
            metrics["perplexity"].update(*label_nll(logits, batch["labels"], causal=not self.encoder_decoder))
        generate = self.generate_during_validation or stage != "val"  # generation in validation: opt-in (slow)
        text_metrics = [name for name in _TEXT_METRICS if name in names]
        if text_metrics and generate and batch.get("references") is not None:
            predictions = self.generate(backbone, batch)
            for name in text_metrics:
                metrics[name].update(predictions, batch["references"])

    def prompts(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """The ids and attention mask generation starts from."""
        if self.encoder_decoder:
            return batch["input_ids"], batch["attention_mask"]
        ids, mask = batch["prompt_input_ids"], batch["prompt_attention_mask"]
        if bool((mask[:, -1] == 0).any()):
            raise ValueError("decoder-only generation needs LEFT-padded prompt_input_ids (a prompt ends with "
                             "padding) — pad prompts on the left")
        return ids, mask

    @torch.no_grad()
    def generate(self, backbone: nn.Module, batch: dict[str, Any]) -> list[str]:
        """Generated text per example (prompt and special tokens removed)."""
        ids, mask = self.prompts(batch)
        settings = self.generation_config(backbone)
        output = backbone.generate(input_ids=ids, attention_mask=mask, generation_config=settings)
        new_tokens = output if self.encoder_decoder else output[:, ids.shape[1]:]
        return [text.strip() for text in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]

    def stream(self, backbone: nn.Module, batch: dict[str, Any]) -> Iterator[str]:
        """`generate` for a batch of one example, as pieces of text while the tokens come: the pieces join to exactly
        the text `generate` returns. transformers' `TextIteratorStreamer` with ``generate`` in a thread (a piece is
        held until a word ends, so a multi-token character is never cut). Refusals come at the call, not on the first
        piece."""
        ids, mask = self.prompts(batch)
        if len(ids) != 1:
            raise UserInputError(f"streaming generates for one example at a time, not {len(ids)} — stream each "
                                 "input on its own, or predict them together without streaming")
        if not self.streams:
            raise UserInputError(f"this head decodes with beam search (num_beams={self.num_beams}), which cannot "
                                 "stream — predict without streaming, or use num_beams=1")
        return self._pieces(backbone, ids, mask)  # checked now, generated when iterated

    def _pieces(self, backbone: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> Iterator[str]:
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        settings, failure = self.generation_config(backbone), []

        def run() -> None:  # inference mode is per thread: entered here, not by the caller
            try:
                with torch.inference_mode():
                    backbone.generate(input_ids=ids, attention_mask=mask, generation_config=settings, streamer=streamer)
            except BaseException as err:  # raised in the caller's thread, below
                failure.append(err)
                streamer.end()

        thread = Thread(target=run, name="generate-stream", daemon=True)
        thread.start()
        yield from stripped(streamer)
        thread.join()
        if failure:
            raise failure[0]

    @property
    def streams(self) -> bool:
        """Whether `stream` can stream this head's decoding (transformers streams greedy and sampled search only)."""
        return self.num_beams == 1

    def predict(self, backbone: nn.Module, batch: dict[str, Any]) -> list[dict[str, Any]]:
        generated = self.generate(backbone, batch)
        references = batch.get("references") or [None] * len(generated)
        sources = batch.get("sources") or [None] * len(generated)
        rows = []
        for source, text, reference in zip(sources, generated, references, strict=True):
            row = {"source": source, "generated": text}
            if reference is not None:
                row["reference"] = reference
            rows.append(row)
        return with_meta(rows, batch)


def stripped(pieces: Iterable[str]) -> Iterator[str]:
    """``pieces`` without the whitespace at the start and the end of their joined text (as `generate` strips it),
    each piece passed on as soon as it is known not to be part of that end."""
    held, started = "", False
    for piece in pieces:
        if not started:
            piece = piece.lstrip()
            started = bool(piece)
        text = held + piece
        body = text.rstrip()
        held = text[len(body):]
        if body:
            yield body
