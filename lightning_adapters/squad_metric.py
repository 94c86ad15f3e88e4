r"""SQuAD v1.1 scoring and answer-span decoding for extractive question answering.

Scoring follows the official ``evaluate-v1.1.py`` (Rajpurkar et al. 2016, https://arxiv.org/abs/1606.05250):
answers are normalised (lower case, punctuation and the articles a/an/the removed, whitespace collapsed); exact match
is 1 when the normalised prediction equals a normalised gold answer; F1 is the token-overlap F1 (bag of tokens)

    P = |pred ∩ gold| / |pred|,   R = |pred ∩ gold| / |gold|,   F1 = 2PR / (P + R),

and each question takes the maximum over its gold answers. Corpus scores are means over questions, times 100.

Decoding: a span (s, e) of one feature (a window of the context) scores ``start_logit[s] + end_logit[e]``; only
spans with both ends on context tokens, ``s <= e`` and ``e - s + 1 <= max_answer_length`` are allowed. The search is
exact (all allowed pairs, a masked seq x seq score matrix), not HF's top-20 heuristic. A long context gives several
features; the question's answer is the best-scoring span over its features, chosen in `SquadMetric.compute` from
per-feature tensors, so the metric is exact under DDP (states are concatenated across ranks, duplicates collapse).
"""

from __future__ import annotations

import re
import string
from collections import Counter

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """The official normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match_score(prediction: str, ground_truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(ground_truth))


def f1_score(prediction: str, ground_truth: str) -> float:
    prediction_tokens = normalize_answer(prediction).split()
    truth_tokens = normalize_answer(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(truth_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(prediction_tokens), overlap / len(truth_tokens)
    return 2 * precision * recall / (precision + recall)


def max_over_ground_truths(score, prediction: str, ground_truths: list[str]) -> float:
    return max(score(prediction, truth) for truth in ground_truths)


def squad_scores(prediction: str, ground_truths: list[str]) -> tuple[float, float]:
    """(exact match, F1) of one prediction against all gold answers of its question, each in [0, 1]."""
    return (max_over_ground_truths(exact_match_score, prediction, ground_truths),
            max_over_ground_truths(f1_score, prediction, ground_truths))


def best_spans(start_logits: torch.Tensor, end_logits: torch.Tensor, context_mask: torch.Tensor,
               max_answer_length: int, n_best: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``n_best`` highest-scoring allowed spans of each feature, best first.

    Args:
        start_logits: (batch, seq) start scores.
        end_logits: (batch, seq) end scores.
        context_mask: (batch, seq) bool, True on context tokens (answers never leave the context).
        max_answer_length: longest allowed span, in tokens.
        n_best: spans returned per feature.

    Returns:
        scores, starts, ends, each (batch, n_best); a feature with fewer allowed spans gets score -inf there.
    """
    seq = start_logits.shape[1]
    scores = start_logits.float()[:, :, None] + end_logits.float()[:, None, :]
    positions = torch.arange(seq, device=scores.device)
    span = positions[None, :] - positions[:, None]  # e - s
    allowed = (span >= 0) & (span < max_answer_length)
    allowed = allowed[None] & context_mask[:, :, None] & context_mask[:, None, :]
    scores = scores.masked_fill(~allowed, float("-inf")).flatten(1)
    top, flat = scores.topk(min(n_best, scores.shape[1]), dim=1)
    return top, flat // seq, flat % seq


class SquadMetric(Metric):
    """Exact match and F1 (x100) over questions, from per-feature best spans.

    ``update`` takes, per feature, the index of its question (global within the split), the score of the feature's
    best span and that span's EM and F1 against the question's gold answers; ``compute`` keeps, for each question,
    the feature with the highest score (ties: the first) and averages.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        for name in ("example_index", "score", "exact", "f1"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, example_index: torch.Tensor, score: torch.Tensor, exact: torch.Tensor, f1: torch.Tensor) -> None:
        self.example_index.append(example_index.long())
        self.score.append(score.float())
        self.exact.append(exact.float())
        self.f1.append(f1.float())

    def compute(self) -> dict[str, torch.Tensor]:
        index, score = dim_zero_cat(self.example_index), dim_zero_cat(self.score)
        exact, f1 = dim_zero_cat(self.exact), dim_zero_cat(self.f1)
        if index.numel() == 0:
            raise RuntimeError("SquadMetric.compute() called before any update")
        # Order by (question, score descending, arrival): the first row of each question is its best feature.
        # -inf (no allowed span) sorts last; stable sorts keep arrival order among ties.
        order = torch.sort(score, descending=True, stable=True).indices
        order = order[torch.sort(index[order], stable=True).indices]
        first = torch.ones_like(order, dtype=torch.bool)
        first[1:] = index[order][1:] != index[order][:-1]
        best = order[first]
        return {"exact_match": 100 * exact[best].mean(), "f1": 100 * f1[best].mean()}
