r"""Extractive question answering: a start and an end score per token, the answer is the best context span.

    [start_logits; end_logits] = h W^T + b,    W in R^{2 x d},    loss = (CE(start, s*) + CE(end, e*)) / 2

as BERT's SQuAD head (Devlin et al. 2019, https://arxiv.org/abs/1810.04805). Padding positions are masked out of
the softmax. A window that does not hold the answer is trained to point at position 0. Decoding and scoring (exact
span search restricted to context tokens and ``max_answer_length``; official SQuAD v1.1 EM/F1) live in
`lightning_adapters.squad_metric`. Decoders work as they are (the context comes after the question, so causal
attention lets every context token see it); encoder-decoder models answer from their encoder, as T5's encoder.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig

from lightning_adapters.errors import UserInputError
from lightning_adapters.heads.base import EpochMetrics, Stage, TaskHead, backbone_inputs, check_dropout
from lightning_adapters.squad_metric import SquadMetric, best_spans, squad_scores


class QuestionAnsweringHead(TaskHead):
    """Start/end span head for extractive QA (SQuAD).

    Args:
        max_answer_length: longest answer, in tokens, considered when decoding.
        n_best: answers listed per question by ``predict`` (the best one first).
        dropout: dropout on the hidden states during training (BERT's QA head uses none).
    """

    reads = {"input_ids": "token ids", "attention_mask": "token mask", "context_mask": "context token mask",
             "start_positions": "answer start token", "end_positions": "answer end token",
             "offsets": "token character offsets", "example_index": "question index per window",
             "id": "question ids", "question": "question texts", "context": "context texts",
             "answers": "gold answer texts"}

    def __init__(self, max_answer_length: int = 30, n_best: int = 5, dropout: float = 0.0) -> None:
        super().__init__()
        if max_answer_length < 1 or n_best < 1:
            raise UserInputError(f"max_answer_length and n_best must be >= 1, got {max_answer_length} and {n_best}")
        self.max_answer_length = max_answer_length
        self.n_best = n_best
        self.dropout = check_dropout(dropout)

    def prepare_backbone(self, model: nn.Module) -> nn.Module:
        return model.get_encoder() if getattr(model.config, "is_encoder_decoder", False) else model

    def build(self, config: PretrainedConfig, label_names: list[str] | None, tokenizer: Any = None) -> None:
        if label_names:
            raise UserInputError(f"extractive question answering has no label set, got label_names {label_names!r} — "
                                 "leave label_names unset (use QADataModule or a SQuAD pack)")
        self.drop = nn.Dropout(self.dropout)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)

    def forward(self, backbone: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = backbone(**backbone_inputs(batch, backbone)).last_hidden_state
        logits = self.qa_outputs(self.drop(hidden.to(self.qa_outputs.weight.dtype))).float()
        return logits[..., 0], logits[..., 1]

    def loss(self, outputs: tuple[torch.Tensor, torch.Tensor], batch: dict[str, Any]) -> torch.Tensor:
        if "start_positions" not in batch:
            raise UserInputError("the batch has no start_positions/end_positions — question answering trains on "
                                 "QADataModule batches")
        pad = batch["attention_mask"] == 0
        start, end = (x.masked_fill(pad, torch.finfo(x.dtype).min) for x in outputs)
        return (F.cross_entropy(start, batch["start_positions"]) + F.cross_entropy(end, batch["end_positions"])) / 2

    def monitor(self) -> tuple[str, str]:
        return "f1", "max"

    def metrics(self) -> EpochMetrics:
        return EpochMetrics({"squad": SquadMetric()})

    def _spans(self, outputs: tuple[torch.Tensor, torch.Tensor], batch: dict[str, Any], n_best: int) -> list[list]:
        """Per feature: up to ``n_best`` (score, text, char_start, char_end), best first, context spans only."""
        scores, starts, ends = best_spans(*outputs, batch["context_mask"], self.max_answer_length, n_best)
        spans = []
        for f, (row, s_row, e_row) in enumerate(zip(scores.tolist(), starts.tolist(), ends.tolist(), strict=True)):
            offsets, context = batch["offsets"][f], batch["context"][f]
            spans.append([(score, context[offsets[s][0]:offsets[e][1]].strip(), offsets[s][0], offsets[e][1])
                          for score, s, e in zip(row, s_row, e_row, strict=True) if score != float("-inf")])
        return spans

    def update_metrics(self, metrics: EpochMetrics, outputs: tuple[torch.Tensor, torch.Tensor],
                       batch: dict[str, Any], backbone: nn.Module, stage: Stage) -> None:
        exact, f1, score = [], [], []
        for spans, answers in zip(self._spans(outputs, batch, 1), batch["answers"], strict=True):
            best_score, text = (spans[0][0], spans[0][1]) if spans else (float("-inf"), "")
            em, f = squad_scores(text, answers) if spans else (0.0, 0.0)
            exact.append(em)
            f1.append(f)
            score.append(best_score)
        device = outputs[0].device
        metrics["squad"].update(batch["example_index"], torch.tensor(score, device=device),
                                torch.tensor(exact, device=device), torch.tensor(f1, device=device))

    def predict(self, backbone: nn.Module, batch: dict[str, Any]) -> list[dict[str, Any]]:
        """One row per question: its ``meta`` (id, gold answers when known), the best answer, its score (start +
        end logit) and the n-best list."""
        spans = self._spans(self(backbone, batch), batch, self.n_best)
        by_question: dict[int, list] = {}
        for index, feature_spans in zip(batch["example_index"].tolist(), spans, strict=True):
            by_question.setdefault(index, []).extend(feature_spans)
        rows, first = [], {index: f for f, index in reversed(list(enumerate(batch["example_index"].tolist())))}
        for index, candidates in by_question.items():
            best: dict[tuple[int, int], tuple] = {}
            for span in sorted(candidates, key=lambda s: -s[0]):  # overlapping windows may find the same span
                best.setdefault((span[2], span[3]), span)
            top = list(best.values())[:self.n_best]
            f = first[index]
            meta = batch["meta"][f] if "meta" in batch else {}
            rows.append({**meta, "id": batch["id"][f], "question": batch["question"][f],
                         "answer": top[0][1] if top else "", "score": round(top[0][0], 4) if top else None,
                         "n_best": [{"text": t, "score": round(s, 4), "start": a, "end": b} for s, t, a, b in top]})
        return rows
