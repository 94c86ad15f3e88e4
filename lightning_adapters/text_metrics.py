r"""Text-generation metrics as torchmetrics objects: ROUGE, corpus BLEU and perplexity, all DDP-safe.

Every state is a sum (``dist_reduce_fx="sum"``), so the epoch value over all ranks equals the single-process one.

- `ROUGE`: ROUGE-1/2/L/Lsum F-measure x 100 from Google's ``rouge-score`` package (the implementation Hugging Face
  ``evaluate`` wraps), averaged over examples; with several references per example the best one counts
  (``RougeScorer.score_multi``). ROUGE-Lsum scores summary-level LCS over *newline-separated* sentences; texts
  without newlines are split after ``.``/``!``/``?`` + whitespace here (offline: no nltk ``punkt`` download).
  Lin (2004), https://aclanthology.org/W04-1013/.
- `BLEU`: corpus sacreBLEU (13a tokenisation, x 100) through torchmetrics' ``SacreBLEUScore``; references per example
  may differ in number. Post (2018), https://aclanthology.org/W18-6319/.
- `Perplexity`: ``exp(sum of token NLL / number of tokens)`` over the epoch (not a mean of per-batch perplexities).

ROUGE and perplexity return ``{}`` when they saw no example (nothing to log); `EpochMetrics` in the heads also
leaves out a metric that was never updated, e.g. BLEU when validation does not generate.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from rouge_score import rouge_scorer
from torchmetrics import Metric
from torchmetrics.text import SacreBLEUScore

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")

References = Sequence[str | Sequence[str]]


def split_sentences(text: str) -> str:
    """One sentence per line, as ROUGE-Lsum expects; text that already has newlines is kept as written."""
    text = text.strip()
    return text if "\n" in text else "\n".join(s for s in _SENTENCE_END.split(text) if s)


def reference_lists(preds: Sequence[str], targets: References) -> list[list[str]]:
    """Each example's references as a non-empty list (a plain string is one reference)."""
    if len(preds) != len(targets):
        raise ValueError(f"{len(preds)} predictions but {len(targets)} references")
    lists = [[t] if isinstance(t, str) else list(t) for t in targets]
    if any(not refs for refs in lists):
        raise ValueError("every prediction needs at least one reference")
    return lists


class ROUGE(Metric):
    """Mean ROUGE F-measure (x 100) per type; ``compute`` returns ``{type: value}`` (empty before any update).

    Args:
        rouge_types: which of rouge1, rouge2, rougeL, rougeLsum (rougeN for other N) to report.
        use_stemmer: Porter-stem tokens before matching (as most summarisation papers report).
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, rouge_types: Sequence[str] = ROUGE_TYPES, use_stemmer: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.rouge_types = list(rouge_types)
        self.scorer = rouge_scorer.RougeScorer(self.rouge_types, use_stemmer=use_stemmer, split_summaries=False)
        self.add_state("fmeasure_sum", torch.zeros(len(self.rouge_types), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Sequence[str], targets: References) -> None:
        totals = [0.0] * len(self.rouge_types)
        for pred, refs in zip(preds, reference_lists(preds, targets), strict=True):
            refs = [split_sentences(r) for r in refs]
            scores = self.scorer.score_multi(refs, split_sentences(pred))
            for i, name in enumerate(self.rouge_types):
                totals[i] += scores[name].fmeasure
        self.fmeasure_sum += torch.tensor(totals, dtype=torch.float64, device=self.fmeasure_sum.device)
        self.count += len(preds)

    def compute(self) -> dict[str, torch.Tensor]:
        if int(self.count) == 0:  # e.g. validation without generation: nothing to report, not a fake 0
            return {}
        means = (100 * self.fmeasure_sum / self.count).float()
        return {name: means[i] for i, name in enumerate(self.rouge_types)}


class BLEU(SacreBLEUScore):
    """Corpus sacreBLEU x 100 (13a tokenisation, up to 4-grams); references may be one string or a list each."""

    higher_is_better = True

    def update(self, preds: Sequence[str], targets: References) -> None:
        super().update(list(preds), reference_lists(preds, targets))

    def compute(self) -> torch.Tensor:
        return 100 * super().compute()


class Perplexity(Metric):
    """``exp(total NLL / total tokens)``; fed with per-batch sums, so padding and batch sizes cannot bias it."""

    full_state_update = False
    higher_is_better = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("nll_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, nll_sum: torch.Tensor, count: torch.Tensor | int) -> None:
        self.nll_sum += nll_sum.detach().to(self.nll_sum)
        self.count += int(count)

    def compute(self) -> torch.Tensor | dict:
        if int(self.count) == 0:  # no label token at all: nothing to report, not exp(0/0) = nan
            return {}
        return torch.exp(self.nll_sum / self.count).float()
