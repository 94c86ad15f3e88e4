"""Data selection: from a large pool of unlabelled or out-of-domain text, pick the examples nearest to the target task
in the frozen backbone's embedding space (kNN-TAPT, Gururangan et al. 2020, "Don't Stop Pretraining").

Why nearest neighbours of every target example rather than the pool rows most similar to the target on average:
an average favours the target's dominant topic, while a round-robin over each target example's own neighbours (all
1st neighbours, then all 2nd neighbours, ...) represents every target example, rare ones included.

Embeddings are the mask-aware mean of the frozen base's last hidden state, L2-normalised, so a dot product is the
cosine similarity. A pool the tokenizer cannot read (another language or script) would still embed, as noise, so it is
refused before any model runs (`check_language`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel

from lightning_adapters.backbone import load_model, load_tokenizer
from lightning_adapters.errors import UserInputError
from lightning_adapters.heads.classification import pool

# Similarities held in memory at once when ranking (targets per block = this // pool size): 8M floats, 32 MiB.
BLOCK_ELEMENTS = 1 << 23

# The language rule (`check_language`). A tokenizer splits text of the language it was trained on into pieces of
# several characters (MiniLM on English: 2.9-4.2 non-blank characters per token over ECTSum, Financial PhraseBank,
# Banking77, DialogSum) and text it does not know into single characters or unknown tokens (Russian 1.05, Greek 1.05,
# Chinese 1.00 with 67% [UNK]). A text "looks foreign" when it gets under FOREIGN_RATIO times the reference's characters
# per token, or more than UNKNOWN_SHARE unknown tokens; the pool is refused when at least REFUSE_SHARE of its texts
# look foreign (English pools measured 0-6% against any English reference; foreign ones 100%), so a few foreign lines
# in an English pool pass. Same-script languages are not caught: German on MiniLM gets 2.2 characters per token.
FOREIGN_RATIO = 0.5
UNKNOWN_SHARE = 0.1
REFUSE_SHARE = 0.5
# Texts measured per side (evenly spaced) and characters per text: a 100k pool is checked in a second.
LANGUAGE_SAMPLE = 2000
LANGUAGE_CHARS = 1000

# The reference when no target texts are given: plain English of several registers.
ENGLISH_REFERENCE = (
    "The company reported higher revenue for the third quarter and raised its outlook for the full year.",
    "Please send me the report by Friday so that we can review it before the meeting.",
    "The weather was cold and windy, so we stayed inside and read books all afternoon.",
    "I lost my card yesterday and would like to order a new one as soon as possible.",
    "Researchers found that the new treatment reduced symptoms in most of the patients they studied.",
    "Our customers expect fast delivery, clear prices and friendly support when something goes wrong.",
    "He walked to the station, bought a ticket and waited for the train to the city.",
    "Interest rates remained unchanged, and analysts expect inflation to slow down next year.",
    "The museum is open every day except Monday, and children under twelve enter for free.",
    "Thank you all for joining the call today; I will now hand it over to our chief financial officer.",
)


@dataclass(frozen=True)
class LanguageCheck:
    """What `check_language` measured: characters per token of pool and reference, and the pool's foreign share."""

    pool_chars_per_token: float
    reference_chars_per_token: float
    pool_unknown_share: float
    foreign_share: float  # share of the measured pool texts that look foreign to the tokenizer
    reference: str  # "the target texts" or "English reference sentences"


@dataclass(frozen=True)
class Selection:
    """Pool indices in selection order, every pool row's highest cosine similarity to a target text, and the
    language measurements."""

    indices: list[int]
    scores: torch.Tensor  # (pool,)
    language: LanguageCheck


def embed_texts(model: nn.Module, tokenizer, texts: Sequence[str], batch_size: int = 64,
                max_length: int = 128) -> torch.Tensor:
    """(len(texts), dim) float32: the mask-aware mean of the frozen base's last hidden state, L2-normalised.

    Texts are batched by length (less padding, the same result) and returned in the order given. Encoder-decoder
    models embed with their encoder.
    """
    _check_batching(batch_size, max_length)
    if not texts:
        raise UserInputError("no texts to embed — pass at least one text")
    encoder = model.get_encoder() if getattr(model.config, "is_encoder_decoder", False) else model
    device = next(model.parameters()).device
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    chunks = []
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = tokenizer([texts[i] for i in order[start:start + batch_size]], padding=True, truncation=True,
                              max_length=max_length, return_tensors="pt")
            mask = batch["attention_mask"].to(device)
            hidden = encoder(input_ids=batch["input_ids"].to(device), attention_mask=mask).last_hidden_state
            chunks.append(F.normalize(pool(hidden.float(), mask, "mean"), dim=-1).cpu())
    embedded = torch.cat(chunks)
    restored = torch.empty_like(embedded)
    restored[torch.tensor(order)] = embedded
    return restored


def _check_batching(batch_size: int, max_length: int) -> None:
    if batch_size < 1:
        raise UserInputError(f"batch size {batch_size} is below 1 — pass a batch size of at least 1")
    if max_length < 2:
        raise UserInputError(f"max length {max_length} is below 2 tokens — pass a max length of at least 2")


def select_nearest(pool_emb: torch.Tensor, target_emb: torch.Tensor, size: int, per_target: int | None = None,
                   block_rows: int | None = None) -> list[int]:
    """Pool row indices, in selection order: every target row's nearest pool rows by cosine similarity, round-robin
    (the 1st neighbours of targets 0, 1, ..., then their 2nd neighbours, ...), each row once, until ``size`` rows.

    Deterministic: equal similarities go to the lower pool index. ``per_target`` (kNN-TAPT's k): take only each
    target's ``per_target`` nearest rows, so fewer than ``size`` come back when neighbourhoods overlap.
    ``block_rows``: target rows ranked at once (default: as many as keep `BLOCK_ELEMENTS` similarities in memory).
    """
    return _nearest_and_best(pool_emb, target_emb, size, per_target, block_rows)[0]


def _nearest_and_best(pool_emb: torch.Tensor, target_emb: torch.Tensor, size: int, per_target: int | None,
                      block_rows: int | None = None) -> tuple[list[int], torch.Tensor]:
    """`select_nearest`'s rows, and every pool row's highest similarity (`max_similarity`) from the same scan."""
    pool_emb, target_emb = _checked_embeddings(pool_emb, target_emb)
    _check_size(size, len(pool_emb))
    _check_per_target(per_target)
    depth = min(len(pool_emb), per_target or math.ceil(size / len(target_emb)))
    while True:
        keys, best = _scan(pool_emb, target_emb, depth, block_rows)
        chosen = keys.lt(_UNSEEN).nonzero().squeeze(1)
        if len(chosen) >= size or depth == len(pool_emb) or per_target is not None:
            return chosen[keys[chosen].argsort()][:size].tolist(), best
        depth = min(len(pool_emb), 2 * depth)  # neighbourhoods overlap: look deeper


def _check_per_target(per_target: int | None) -> None:
    if per_target is not None and per_target < 1:
        raise UserInputError(f"per_target {per_target} is below 1 — take at least 1 neighbour per target text")


def max_similarity(pool_emb: torch.Tensor, target_emb: torch.Tensor, block_rows: int | None = None) -> torch.Tensor:
    """(pool,): each pool row's highest cosine similarity to any target row."""
    pool_emb, target_emb = _checked_embeddings(pool_emb, target_emb)
    return _scan(pool_emb, target_emb, 1, block_rows)[1]


_UNSEEN = torch.iinfo(torch.int64).max


def _scan(pool_emb: torch.Tensor, target_emb: torch.Tensor, depth: int, block_rows: int | None
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass over blocks of target rows. Returns, per pool row, the key ``rank * targets + target`` of its first
    appearance in the round-robin through ``depth`` ranks (`_UNSEEN` if none), and its highest similarity.

    Why keys: the round-robin visits (rank, target) slots in lexicographic order and keeps a row at its first slot,
    so sorting rows by their smallest key is the round-robin, without a (targets x depth) table or a Python loop.
    """
    targets = len(target_emb)
    rows = block_rows or max(1, BLOCK_ELEMENTS // len(pool_emb))
    keys = torch.full((len(pool_emb),), _UNSEEN, dtype=torch.int64)
    best = torch.full((len(pool_emb),), -math.inf)
    ranks = torch.arange(depth, dtype=torch.int64) * targets
    for start in range(0, targets, rows):
        sims = target_emb[start:start + rows] @ pool_emb.T  # (block, pool)
        best = torch.maximum(best, sims.max(0).values)
        nearest = _top_columns(sims, depth)
        slot = ranks + torch.arange(start, start + len(sims)).unsqueeze(1)
        keys.scatter_reduce_(0, nearest.flatten(), slot.flatten(), "amin")
    return keys, best


def _top_columns(sims: torch.Tensor, depth: int) -> torch.Tensor:
    """(rows, depth): each row's ``depth`` largest columns, best first, ties to the lower column (`torch.topk` alone
    keeps an arbitrary one of tied values)."""
    kth = sims.topk(depth, dim=1).values[:, -1:]
    above = sims > kth
    ties = sims == kth
    keep = above | (ties & (ties.cumsum(1) <= depth - above.sum(1, keepdim=True)))
    columns = keep.nonzero()[:, 1].view(len(sims), depth)  # row by row, ascending column
    order = sims.gather(1, columns).sort(dim=1, descending=True, stable=True).indices
    return columns.gather(1, order)


def _checked_embeddings(pool_emb: torch.Tensor, target_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both as unit-length float32 rows (so a dot product is the cosine similarity), after the shape checks."""
    if pool_emb.ndim != 2 or target_emb.ndim != 2:
        raise UserInputError(f"embeddings must be (rows, dim) matrices, got {tuple(pool_emb.shape)} and "
                             f"{tuple(target_emb.shape)} — pass the output of embed_texts")
    if pool_emb.shape[1] != target_emb.shape[1]:
        raise UserInputError(f"pool embeddings have {pool_emb.shape[1]} dimensions, target {target_emb.shape[1]} — "
                             "embed both with the same backbone")
    if not len(pool_emb) or not len(target_emb):
        raise UserInputError(f"{'pool' if not len(pool_emb) else 'target'} embeddings have no rows — pass at least "
                             "one text on each side")
    return (F.normalize(pool_emb.detach().float().cpu(), dim=1),
            F.normalize(target_emb.detach().float().cpu(), dim=1))


def _check_size(size: int, pool_size: int) -> None:
    if not 1 <= size <= pool_size:
        raise UserInputError(f"cannot select {size} of {pool_size} pool texts — pass a size between 1 and "
                             f"{pool_size}" + (", or a larger pool" if size > pool_size else ""))


def check_language(tokenizer, pool_texts: Sequence[str], target_texts: Sequence[str] | None = None) -> LanguageCheck:
    """Refuse a pool in another language or script than the tokenizer expects; return what was measured.

    Reference: the target texts (the tokenizer is taken to suit the task's own data), else `ENGLISH_REFERENCE`. The
    rule and its thresholds are documented at `FOREIGN_RATIO`.
    """
    reference = "the target texts" if target_texts else "English reference sentences"
    reference_texts = _sample(target_texts or ENGLISH_REFERENCE)
    ref_chars, ref_tokens, _ = zip(*_token_counts(tokenizer, reference_texts), strict=True)
    if not sum(ref_tokens):
        raise UserInputError(f"the tokenizer turns {reference} into no tokens — pass target texts with words in them")
    reference_rate = sum(ref_chars) / sum(ref_tokens)
    counts = [c for c in _token_counts(tokenizer, _sample(pool_texts)) if c[1]]
    if not counts:
        raise UserInputError("the tokenizer turns the selection pool into no tokens — pass a pool of text")
    foreign = [chars < FOREIGN_RATIO * reference_rate * tokens or unknown > UNKNOWN_SHARE * tokens
               for chars, tokens, unknown in counts]
    chars, tokens, unknown = (sum(column) for column in zip(*counts, strict=True))
    measured = LanguageCheck(chars / tokens, reference_rate, unknown / tokens, sum(foreign) / len(foreign), reference)
    if measured.foreign_share >= REFUSE_SHARE:
        raise UserInputError(
            f"the selection pool looks like another language or script than the tokenizer expects: "
            f"{measured.foreign_share:.0%} of its texts get under {FOREIGN_RATIO:g}x the characters per token of "
            f"{reference} or over {UNKNOWN_SHARE:.0%} unknown tokens (pool {measured.pool_chars_per_token:.2f} vs "
            f"{reference_rate:.2f} characters per token, {measured.pool_unknown_share:.0%} unknown) — use a pool in "
            "the tokenizer's language, or a multilingual backbone")
    return measured


def _sample(texts: Sequence[str]) -> list[str]:
    """Up to `LANGUAGE_SAMPLE` evenly spaced texts, each cut to `LANGUAGE_CHARS` characters."""
    step = max(1, math.ceil(len(texts) / LANGUAGE_SAMPLE))
    return [text[:LANGUAGE_CHARS] for text in list(texts)[::step]]


def _token_counts(tokenizer, texts: list[str]) -> list[tuple[int, int, int]]:
    """(non-blank characters, tokens, unknown tokens) of each text, without special tokens."""
    ids = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
    unk = tokenizer.unk_token_id
    return [(len("".join(text.split())), len(row), sum(i == unk for i in row) if unk is not None else 0)
            for text, row in zip(texts, ids, strict=True)]


def select_scored(backbone: str, pool_texts: Sequence[str], target_texts: Sequence[str], size: int,
                  batch_size: int = 64, max_length: int = 128, per_target: int | None = None,
                  device: str | None = None) -> Selection:
    """`select_texts`, with every pool text's highest similarity to the target and the language measurements."""
    _check_texts("selection pool", pool_texts)
    _check_texts("target", target_texts)
    _check_size(size, len(pool_texts))
    _check_batching(batch_size, max_length)
    _check_per_target(per_target)
    tokenizer = load_tokenizer(backbone)
    language = check_language(tokenizer, pool_texts, target_texts)  # before the model: it is the costly part
    model = load_model(backbone, AutoModel).to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    target_emb = embed_texts(model, tokenizer, target_texts, batch_size, max_length)
    pool_emb = embed_texts(model, tokenizer, pool_texts, batch_size, max_length)
    indices, scores = _nearest_and_best(pool_emb, target_emb, size, per_target)  # one scan gives both
    return Selection(indices, scores, language)


def select_texts(backbone: str, pool_texts: Sequence[str], target_texts: Sequence[str], size: int,
                 batch_size: int = 64, max_length: int = 128, per_target: int | None = None,
                 device: str | None = None) -> list[int]:
    """Indices into ``pool_texts`` of the ``size`` texts nearest to ``target_texts``, in selection order (see
    `select_nearest`), embedded by the frozen ``backbone`` (an alias, folder or hub id) on ``device`` (default: CUDA
    when available). Refuses, in one line, an empty or blank pool or target, a size outside 1..pool, and a pool in
    another language than the tokenizer's (`check_language`)."""
    return select_scored(backbone, pool_texts, target_texts, size, batch_size, max_length, per_target,
                         device).indices


def _check_texts(what: str, texts: Sequence[str]) -> None:
    if not texts:
        raise UserInputError(f"the {what} is empty — pass at least one text")
    blank = next((i for i, text in enumerate(texts) if not str(text).strip()), None)
    if blank is not None:
        raise UserInputError(f"{what} text {blank} is blank — drop blank texts first")
