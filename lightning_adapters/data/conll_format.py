"""CoNLL-format token files and entity tagging schemes, checked line by line.

A CoNLL file holds one token per line as columns separated by spaces or tabs (``token [POS chunk ...] tag``),
sentences separated by blank lines; ``-DOCSTART-`` lines (document separators in the original CoNLL-2003 files) are
skipped. Only ASCII spaces and tabs separate columns, and only LF, CR LF or CR end a line: a no-break space (U+00A0)
inside a token, e.g. "10 000" written with one, stays in the token (at the ends of a line it is stripped), and a
U+0085 or U+2028 in the text does not shift every later line number (Python's ``str.split()`` and ``splitlines()``
treat all of them as breaks).

Tags are normalised to IOB2 (every entity starts with ``B-``), the scheme seqeval and conlleval score in:

- ``IOB2``: ``B-X`` starts an entity, ``I-X`` continues one; an ``I-X`` not following ``B-X``/``I-X`` is an error;
- ``IOB1`` (the original CoNLL-2003 files): ``I-X`` starts and continues entities, ``B-X`` only separates two adjacent
  entities of type X (so a ``B-X`` after anything but ``X`` is an error);
- ``IO``: no ``B-`` at all, consecutive ``I-X`` tokens form one entity (adjacent same-type entities merge);
- ``auto``: any of these; an ``I-X`` that starts an entity becomes ``B-X`` — how conlleval reads ill-formed IOB2.

IOB1 and IO normalise by the same rule (an entity-starting ``I-X`` becomes ``B-X``); they differ only in what is valid.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lightning_adapters.data.source import load_hub_splits
from lightning_adapters.errors import UserInputError

Scheme = Literal["auto", "IOB1", "IOB2", "IO"]
SCHEMES = ("auto", "IOB1", "IOB2", "IO")
DOCSTART = "-DOCSTART-"
_COLUMN_SEPARATOR = re.compile(r"[ \t\f\v]+")  # ASCII only: see the module docstring


@dataclass
class Sentence:
    """One sentence: its words, its tags (None when unlabelled) and where it is (for error messages).

    ``line`` is the file line of the first word (words are on consecutive lines), or the row of a Hub dataset;
    ``document`` counts the ``-DOCSTART-`` lines before it (0 in a file without any).
    """

    words: list[str]
    tags: list[str] | None
    line: int
    source: str
    hub: bool = False
    document: int = 0

    def where(self, i: int) -> str:
        """Where word ``i`` is: a file line, or a Hub row and word number."""
        return f"{self.source} row {self.line}, word {i + 1}" if self.hub else f"{self.source} line {self.line + i}"


def split_tag(tag: str, where: str) -> tuple[str, str | None]:
    """``"O"`` -> ("O", None); ``"B-PER"`` -> ("B", "PER"); anything else is refused (seqeval would misread it)."""
    if tag == "O":
        return "O", None
    if len(tag) > 2 and tag[:2] in ("B-", "I-"):
        return tag[0], tag[2:]
    raise UserInputError(f"{where}: tag '{tag}' is not O, B-<type> or I-<type> — fix the tag (tags in other schemes, "
                         "e.g. BIOES or bare types, are not read)")


def to_iob2(tags: list[str], scheme: str, where: Callable[[int], str]) -> list[str]:
    """The IOB2 form of one sentence's ``tags`` read in ``scheme``; ``where(i)`` names token i for errors."""
    out, prev_type = [], None  # prev_type: the entity type the previous token belongs to (None: outside)
    for i, tag in enumerate(tags):
        prefix, kind = split_tag(tag, where(i))
        if prefix == "O":
            out.append("O")
        elif prefix == "B":
            if scheme == "IO":
                raise UserInputError(f"{where(i)}: tag '{tag}' has a B- prefix, which the IO scheme has no place for "
                                     "— set scheme: auto (or IOB1/IOB2)")
            if scheme == "IOB1" and prev_type != kind:
                raise UserInputError(f"{where(i)}: '{tag}' follows {tags[i - 1] if i else 'the sentence start'}; IOB1 "
                                     f"uses B- only between two adjacent {kind} entities — set scheme: IOB2 or auto")
            out.append(tag)
        elif prev_type == kind:
            out.append(tag)
        else:
            if scheme == "IOB2":
                raise UserInputError(f"{where(i)}: '{tag}' starts an entity, which IOB2 does not allow (entities start "
                                     "with B-) — set scheme: IOB1, IO or auto")
            out.append(f"B-{kind}")
        prev_type = kind
    return out


def label_set(sentences: list[list[str]]) -> list[str]:
    """``O`` then ``B-T``, ``I-T`` for every entity type T in the (IOB2) tags, types sorted."""
    kinds = sorted({tag[2:] for tags in sentences for tag in tags if tag != "O"})
    return ["O"] + [f"{prefix}-{kind}" for kind in kinds for prefix in ("B", "I")]


def read_conll(path: str | Path, source: str, tag_column: int | None = -1) -> list[Sentence]:
    """Sentences of a CoNLL file. ``tag_column``: index of the tag column (negative: from the end); ``None`` reads
    words only (prediction input, where a tag column is optional)."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")  # -sig: a BOM would start the first token
    except UnicodeDecodeError as err:
        raise UserInputError(f"{source} is not UTF-8 text (byte {err.start}) — convert it to UTF-8") from err
    sentences: list[Sentence] = []
    words: list[str] = []
    tags: list[str] = []
    document = 0  # -DOCSTART- lines seen; the first one opens document 1
    for number, line in enumerate(text.split("\n") + [""], 1):
        line = line.strip()  # any whitespace at the ends, so a trailing no-break space never joins the tag
        columns = _COLUMN_SEPARATOR.split(line) if line else []
        if not columns or columns[0] == DOCSTART:  # a blank or document line ends the sentence
            if words:
                sentences.append(Sentence(words, tags if tag_column is not None else None, number - len(words),
                                          source, document=document))
            words, tags = [], []
            document += bool(columns)
            continue
        if tag_column is not None:
            tags.append(_tag(columns, tag_column, f"{source} line {number}"))
        words.append(columns[0])
    if not sentences:
        raise UserInputError(f"{source} has no sentences — pass a CoNLL file (one 'token ... tag' line per word, "
                             "a blank line between sentences)")
    return sentences


def _tag(columns: list[str], tag_column: int, where: str) -> str:
    if len(columns) < 2:
        raise UserInputError(f"{where}: '{columns[0]}' has no tag column — write 'token tag' (whitespace-separated) "
                             "on each line")
    if not -len(columns) <= tag_column < len(columns) or tag_column in (0, -len(columns)):
        raise UserInputError(f"{where}: tag_column {tag_column} does not exist in a line of {len(columns)} columns "
                             f"(column 0 is the token) — use a tag_column between 1 and {len(columns) - 1}, or -1")
    return columns[tag_column]


def read_hub(name: str, config: str | None, tokens_field: str, tags_field: str,
             label_names: list[str] | None) -> dict[str, list[Sentence]]:
    """Sentences of every split of a Hub dataset (``valid``/``dev`` become ``validation``); integer tags are mapped
    through the dataset's ClassLabel names, else through ``label_names``."""
    splits = {}
    for split_name, (source, split) in load_hub_splits(name, config).items():
        for field in (tokens_field, tags_field):
            if field not in split.column_names:
                raise UserInputError(f"{source} has no column '{field}' (columns: {', '.join(split.column_names)}) "
                                     "— set tokens_field / tags_field")
        feature = getattr(split.features[tags_field], "feature", None)
        names = list(feature.names) if hasattr(feature, "names") else label_names
        sentences = []
        for row, (words, tags) in enumerate(zip(split[tokens_field], split[tags_field], strict=True), 1):
            if len(tags) != len(words):
                raise UserInputError(f"{source} row {row}: {len(words)} tokens but {len(tags)} tags — fix the row")
            if tags and not isinstance(tags[0], str):
                if names is None:
                    raise UserInputError(f"{source} has integer tags without class names — pass label_names (the "
                                         "tag of each id, in id order)")
                tags = [names[int(t)] for t in tags]
            if words:
                sentences.append(Sentence([str(w) for w in words], [str(t) for t in tags], row, source, hub=True))
        splits[split_name] = sentences
    return splits


def check_tag_names(names: list[str] | None) -> list[str] | None:
    """``label_names`` given for token classification: distinct IOB2 tags, ``O`` among them."""
    if names is None:
        return None
    if not names or len(set(names)) != len(names):
        raise UserInputError(f"label_names must be a non-empty list of distinct tags, got {names} — fix it")
    for name in names:
        split_tag(str(name), "label_names")
    if "O" not in names:
        raise UserInputError(f"label_names {names} lack 'O' — add the outside tag")
    return [str(name) for name in names]


def tag_names(splits: dict[str, list[Sentence]], given: list[str] | None, scheme: str) -> list[str]:
    """Normalise every labelled split to IOB2 and check its tags against the label set (default: the training
    tags)."""
    labelled = [s for split, sentences in splits.items() if split != "predict" for s in sentences]
    for sentence in labelled:
        sentence.tags = to_iob2(sentence.tags, scheme, sentence.where)
    if given is None:
        if "train" not in splits:
            raise UserInputError("no training data to take the label names from — pass train_file (or "
                                 "hub_dataset), or label_names")
        given = label_set([s.tags for s in splits["train"]])
    known = set(given)
    for sentence in labelled:
        bad = next((i for i, tag in enumerate(sentence.tags) if tag not in known), None)
        if bad is not None:
            raise UserInputError(f"{sentence.where(bad)}: tag '{sentence.tags[bad]}' is not in label_names "
                                 f"{given} — add it or fix the tag")
    return given
