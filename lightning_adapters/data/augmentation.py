"""Training-data augmentation, a DataModule option (``augment``): EDA token edits and cached paraphrases.

How augmented rows enter training. The training split becomes, for the whole run:

    [every row as it is] + [``copies`` edited versions of every row] + [one paraphrase per row, where there is one]

The edited versions are drawn again every epoch; the paraphrases are generated once and fixed. The epoch length is
the same in every epoch of a run, so `ResumableDataLoader`'s batch count and the seeded batch order stay exact on
resume. Validation, test and predict items are never augmented.

Reproducible. The edits of copy ``c`` of row ``r`` in epoch ``e`` come from a generator seeded by (data seed, e, r, c)
alone — not by the batch order, the worker processes or a resume — so a resumed run sees the same edited rows.

How the epoch reaches the items. The training sampler yields ``(index, epoch)`` pairs (`EpochIndexSampler`, put
around the seeded sampler by `SplitDataModule` whenever the training set reads the epoch), and the dataset indexes
by that pair. The epoch travels with every index, rather than being set on the dataset, because worker processes —
persistent ones too — hold their own copy of the dataset, which a ``set_epoch`` in the main process never reaches.

Token edits (Wei & Zou 2019, "EDA"), per word, with their probabilities: ``delete`` the word, ``swap`` it with another
word of the text, ``insert`` a copy of a word of the same text at a random place. EDA inserts a WordNet synonym; we
have no WordNet offline, so the inserted word is one of the text's own words. Texts are split into words at
whitespace and joined with single spaces. For token classification only words tagged ``O`` are edited, and every
single edit is checked to keep the entity spans (type and words, in order) and leave valid tags in the scheme
(`check_entities_kept`, on the IOB2 tags the DataModule holds): an edit that would merge, split or alter an entity —
e.g. deleting the ``O`` between ``B-PER I-PER`` and an ``I-PER`` that an edit left behind — is not made.

Paraphrases (text classification only: they rewrite the words NER tags label) are generated once by a
`ParaphraseGenerator` — `lightning_adapters.paraphraser.Paraphraser`: a decoder through our own generation path,
`lightning_adapters.Predictor` — and cached in a JSONL file (one record per training text, keyed by a hash of the
text and the generator's settings). The cache is completed in ``prepare_data`` (Lightning's rank-0 hook for writes)
and read in ``setup``; a paraphrase row keeps its source row's label. The generator is an object given to
`Augmentation`, not a module imported here: it needs `lightning_adapters.predictor`, which imports the DataModules
that import this module.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info

from lightning_adapters.atomic import atomic_write, check_can_create
from lightning_adapters.data.conll_format import to_iob2
from lightning_adapters.data.loaders import check_limits
from lightning_adapters.errors import UserInputError

GENERATE_CHUNK = 64  # texts generated between two cache writes: a killed generation keeps what it made
Words = list[str]
Tags = list[str] | None
Entities = list[tuple[str, tuple[str, ...]]]


class ParaphraseGenerator:
    """What `Augmentation` needs of a paraphrase generator (`lightning_adapters.paraphraser.Paraphraser`)."""

    def settings(self) -> dict[str, Any]:
        """What decides a paraphrase besides its text (JSON values): part of every cache key."""
        raise NotImplementedError

    def generate(self, texts: list[str]) -> list[str]:
        """One paraphrase per text, in order."""
        raise NotImplementedError

    def release(self) -> None:
        """Free what generating took (a model): called once the cache is complete, training does not need it."""


class Augmentation:
    """Augment the training split: EDA token edits re-drawn every epoch, and paraphrases generated once.

    Args:
        swap: per word, probability of swapping it with another word of the text (NER: another ``O`` word).
        delete: per word, probability of deleting it (NER: ``O`` words only; a text keeps at least one word).
        insert: per word, probability of inserting a copy of one of the text's words (NER: of an ``O`` word, as
            ``O``) at a random place; EDA inserts a WordNet synonym, which needs WordNet (not available offline).
        copies: edited versions of every training row added to the training split, drawn again every epoch.
        paraphrases: generator of one paraphrase per training text, added as a row with its label (text
            classification only), e.g. `lightning_adapters.paraphraser.Paraphraser` (a decoder through our
            Predictor: an exported generation adapter, or a base such as ``smollm2`` with an instruction prompt).
        paraphrase_cache: JSONL file holding the paraphrases (required with ``paraphrases``); a missing or partial
            one is completed before training (``prepare_data``), a complete one is only read.
    """

    def __init__(self, swap: float = 0.1, delete: float = 0.1, insert: float = 0.1, copies: int = 1,
                 paraphrases: ParaphraseGenerator | None = None, paraphrase_cache: str | None = None) -> None:
        check_limits(swap=(swap, 0, 1), delete=(delete, 0, 1), insert=(insert, 0, 1), copies=(copies, 0, math.inf))
        if copies != int(copies):
            raise UserInputError(f"copies={copies} is not a whole number — use 0, 1, 2, ...")
        if copies == 0 and paraphrases is None:
            raise UserInputError("augment adds nothing (copies=0 and no paraphrases) — set copies >= 1 or "
                                 "paraphrases, or drop augment")
        if paraphrases is not None and paraphrase_cache is None:
            raise UserInputError("paraphrases need a paraphrase_cache file — pass paraphrase_cache: <path>.jsonl "
                                 "(generated once, read by later runs)")
        if paraphrases is not None and not isinstance(paraphrases, ParaphraseGenerator):
            raise UserInputError(f"paraphrases is a {type(paraphrases).__name__}, not a paraphrase generator — pass "
                                 "Paraphraser(model=...) (lightning_adapters.paraphraser)")
        if paraphrase_cache is not None:  # now, not after the generator has loaded and worked
            if Path(paraphrase_cache).is_dir():
                raise UserInputError(f"paraphrase_cache '{paraphrase_cache}' is a folder — pass a .jsonl file path")
            check_can_create(Path(paraphrase_cache).parent, f"paraphrase_cache '{paraphrase_cache}'")
        self.swap, self.delete, self.insert, self.copies = swap, delete, insert, int(copies)
        self.paraphrases, self.paraphrase_cache = paraphrases, paraphrase_cache

    def __repr__(self) -> str:
        names = ("swap", "delete", "insert", "copies", "paraphrases", "paraphrase_cache")
        return f"Augmentation({', '.join(f'{name}={getattr(self, name)!r}' for name in names)})"

    def check_keeps_tags(self) -> None:
        """Token classification: refuse what cannot keep the entity spans its tags label."""
        if self.paraphrases is not None:
            raise UserInputError("paraphrases rewrite the words the tags label — use token edits "
                                 "(swap/delete/insert) for NER")

    # ---- token edits -------------------------------------------------------------------------------------------
    def edit_row(self, words: Words, tags: Tags, seed: int, epoch: int, row: int, copy: int, scheme: str = "IOB2"
                 ) -> tuple[Words, Tags]:
        """Copy ``copy`` of row ``row`` in ``epoch``: the same for the same arguments, wherever it is drawn."""
        return self.edit(words, tags, edit_generator(seed, epoch, row, copy), scheme)

    def edit(self, words: Words, tags: Tags, rng: np.random.Generator, scheme: str = "IOB2") -> tuple[Words, Tags]:
        """``words`` (and ``tags``) after deletions, then swaps, then insertions, each drawn per word from ``rng``;
        with tags, only ``O`` words are edited and an edit that changes the entity spans is not made."""
        text = EditedText(words, tags, scheme)
        if self.delete:
            text.delete_words(self.delete, rng)
        if self.swap:
            text.swap_words(self.swap, rng)
        if self.insert:
            text.insert_words(self.insert, rng)
        return text.words, text.tags

    # ---- paraphrases -------------------------------------------------------------------------------------------
    def cache_key(self, text: str, settings: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps([text, settings], sort_keys=True).encode()).hexdigest()

    def read_cache(self) -> dict[str, dict[str, str]]:
        """The cache's records by key (none when the file does not exist yet)."""
        path = Path(self.paraphrase_cache)
        if not path.exists():
            return {}
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            reason = err.strerror if isinstance(err, OSError) else "not UTF-8"
            raise UserInputError(f"cannot read paraphrase_cache '{path}' ({reason}) — pass a readable .jsonl file, "
                                 "or a new path to generate it") from err
        return dict(parse_record(line, f"{path} line {number}") for number, line in enumerate(lines, 1)
                    if line.strip())

    def complete_cache(self, texts: Sequence[str]) -> int:
        """Generate the paraphrases the cache lacks for ``texts`` and write them (atomically, every
        `GENERATE_CHUNK` texts); the number generated. A complete cache is only read."""
        records, settings = self.read_cache(), self.paraphrases.settings()
        missing = [text for text in dict.fromkeys(texts) if self.cache_key(text, settings) not in records]
        if not missing:
            return 0
        for start in range(0, len(missing), GENERATE_CHUNK):
            chunk = missing[start:start + GENERATE_CHUNK]
            for text, paraphrase in zip(chunk, self.paraphrases.generate(chunk), strict=True):
                key = self.cache_key(text, settings)
                records[key] = {"key": key, "text": text, "paraphrase": paraphrase}
            atomic_write(self.paraphrase_cache, lambda tmp: write_records(tmp, records.values()))
        self.paraphrases.release()
        rank_zero_info(f"augment: generated {len(missing):,} paraphrases into {self.paraphrase_cache}")
        return len(missing)

    def cached_paraphrases(self, texts: Sequence[str]) -> list[str]:
        """The cached paraphrase of every text; a cache lacking any is refused (``prepare_data`` completes it)."""
        records, settings = self.read_cache(), self.paraphrases.settings()
        found = [records.get(self.cache_key(text, settings)) for text in texts]
        lacking = sum(record is None for record in found)
        if lacking:
            raise UserInputError(f"paraphrase_cache '{self.paraphrase_cache}' lacks {lacking} of the {len(texts)} "
                                 "training texts — call the DataModule's prepare_data() first (Trainer.fit does)")
        return [record["paraphrase"] for record in found]


def edit_generator(seed: int, epoch: int, row: int, copy: int) -> np.random.Generator:
    """The generator of one edited row, from (seed, epoch, row, copy) only (negative seeds are taken mod 2**64)."""
    return np.random.default_rng([seed % 2**64, epoch, row, copy])


def parse_record(line: str, where: str) -> tuple[str, dict[str, str]]:
    """One cache line as (key, record)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise UserInputError(f"{where} is not JSON ({err.msg}) — delete the paraphrase_cache file to generate it "
                             "again, or fix the line") from err
    fields = ("key", "text", "paraphrase")
    if not isinstance(record, dict) or not all(isinstance(record.get(name), str) for name in fields):
        raise UserInputError(f"{where} is not a paraphrase record (needs string fields key, text, paraphrase) — "
                             "delete the paraphrase_cache file to generate it again, or fix the line")
    return record["key"], record


def write_records(path: str, records: Any) -> None:
    with open(path, "w", encoding="utf-8") as out:
        out.writelines(json.dumps(record, ensure_ascii=False) + "\n" for record in records)


# ---- entity spans ------------------------------------------------------------------------------------------------
def entity_spans(words: Words, tags: list[str], scheme: str) -> Entities | None:
    """The entities of a tagged text as (type, words) in order; None when the tags are not valid in ``scheme``."""
    if len(words) != len(tags):
        return None
    try:
        iob2 = to_iob2(tags, scheme, lambda i: f"word {i + 1}")
    except UserInputError:
        return None
    spans: list[tuple[str, list[str]]] = []
    for word, tag in zip(words, iob2, strict=True):
        if tag.startswith("B-"):
            spans.append((tag[2:], [word]))
        elif tag.startswith("I-"):
            spans[-1][1].append(word)
    return [(kind, tuple(span)) for kind, span in spans]


def check_entities_kept(before_words: Words, before_tags: list[str], after_words: Words, after_tags: list[str],
                        scheme: str) -> None:
    """Refuse, in one line, an edit of a tagged text that changes its entity spans (type and words, in order) or
    leaves tags that are invalid in ``scheme`` (e.g. a ``B-X`` after an ``O`` in IOB1)."""
    before = entity_spans(before_words, before_tags, scheme)
    after = entity_spans(after_words, after_tags, scheme)
    if after is None:
        raise UserInputError(f"augmentation that would leave tags {after_tags} invalid in {scheme} (or not one per "
                             "word) — edit only O words where the scheme still reads the same entities")
    if after != before:
        raise UserInputError(f"augmentation that would change an entity span ({_spans(before)} -> {_spans(after)}) "
                             "— edit only O words, never one inside an entity or separating two")


def _spans(entities: Entities | None) -> str:
    return "; ".join(f"{kind}: {' '.join(words)}" for kind, words in entities or []) or "none"


class EditedText:
    """A text under token edits: its words, its tags (None: untagged), and the rule every edit must keep."""

    def __init__(self, words: Words, tags: Tags, scheme: str) -> None:
        self.words, self.tags, self.scheme = list(words), None if tags is None else list(tags), scheme
        self.entities = None if tags is None else entity_spans(self.words, self.tags, scheme)

    def editable(self) -> list[int]:
        """Positions that may be edited: every word of an untagged text, the ``O`` words of a tagged one."""
        if self.tags is None:
            return list(range(len(self.words)))
        return [i for i, tag in enumerate(self.tags) if tag == "O"]

    def apply(self, words: Words, tags: Tags) -> None:
        """Make the edit unless it changes the entity spans (or leaves invalid tags)."""
        if tags is not None and entity_spans(words, tags, self.scheme) != self.entities:
            return
        self.words, self.tags = words, tags

    def delete_words(self, probability: float, rng: np.random.Generator) -> None:
        for i in reversed(self.editable()):  # from the end: the positions still to come do not move
            if rng.random() < probability and len(self.words) > 1:
                self.apply(self.words[:i] + self.words[i + 1:],
                           None if self.tags is None else self.tags[:i] + self.tags[i + 1:])

    def swap_words(self, probability: float, rng: np.random.Generator) -> None:
        positions = self.editable()
        for i in positions:
            if rng.random() < probability and len(positions) > 1:
                j = positions[(positions.index(i) + 1 + int(rng.integers(len(positions) - 1))) % len(positions)]
                words = list(self.words)
                words[i], words[j] = words[j], words[i]
                self.apply(words, self.tags)  # both tagged O: the tags stay as they are

    def insert_words(self, probability: float, rng: np.random.Generator) -> None:
        for _ in self.editable():
            positions = self.editable()
            if rng.random() < probability and positions:
                word = self.words[positions[int(rng.integers(len(positions)))]]
                gap = int(rng.integers(len(self.words) + 1))
                self.apply(self.words[:gap] + [word] + self.words[gap:],
                           None if self.tags is None else self.tags[:gap] + ["O"] + self.tags[gap:])


# ---- the training split ------------------------------------------------------------------------------------------
class AugmentedRows(torch.utils.data.Dataset):
    """The training split with its augmented rows, indexed by ``(position, epoch)`` (`EpochIndexSampler`).

    Positions: ``[0, n)`` the rows as encoded, then ``copies`` blocks of ``n`` edited rows (copy ``c`` of row ``r``
    at ``n * (1 + c) + r``), then the paraphrase items. Iterating yields the items as stored, a copy row as its source
    row: the lengths `LengthGroupedSampler` groups by. An index without the epoch is refused: a loader that passes
    none (e.g. `MultiTaskDataModule`'s) would train on unedited copies.

    Args:
        items: the training items, encoded.
        rows: per item its (words, tags) (tags None for untagged text), what the edits work on.
        encode: ``(row, words, tags) -> item``: an edited version of row ``row`` encoded as the split's items are.
        augment: the edit settings.
        seed: the data seed.
        scheme: the tagging scheme of ``rows``' tags.
        extra: items added as they are (paraphrases).
    """

    reads_epoch = True  # `SplitDataModule` gives the training loader an `EpochIndexSampler`

    def __init__(self, items: Sequence[dict[str, Any]], rows: Sequence[tuple[Words, Tags]],
                 encode: Callable[[int, Words, Tags], dict[str, Any]], augment: Augmentation, seed: int,
                 scheme: str = "IOB2", extra: Sequence[dict[str, Any]] = ()) -> None:
        self.items, self.rows, self.encode, self.augment = list(items), list(rows), encode, augment
        self.seed, self.scheme, self.extra = seed, scheme, list(extra)

    def __len__(self) -> int:
        return len(self.items) * (1 + self.augment.copies) + len(self.extra)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for _ in range(1 + self.augment.copies):
            yield from self.items
        yield from self.extra

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        if not isinstance(key, tuple):
            raise UserInputError("augment edits the training rows per epoch, and this training loader reads rows "
                                 "without the epoch — drop augment here (MultiTaskDataModule tasks cannot augment)")
        position, epoch = key
        count, edited_end = len(self.items), len(self.items) * (1 + self.augment.copies)
        if not 0 <= position < len(self):
            raise IndexError(position)
        if position >= edited_end:
            return self.extra[position - edited_end]
        row, copy = position % count, position // count - 1
        if copy < 0:
            return self.items[row]
        words, tags = self.rows[row]
        new_words, new_tags = self.augment.edit_row(words, tags, self.seed, epoch, row, copy, self.scheme)
        if new_words == words and new_tags == tags:  # nothing edited: the row exactly as encoded
            return self.items[row]
        return self.encode(row, new_words, new_tags)
