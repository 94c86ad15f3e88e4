"""Reading labelled text tables: CSV, TSV, JSON Lines and parquet, checked row by row.

A `Table` keeps where each row came from, so every error names the file, the line and the fix. Label values may be
names or integer indices into the label names. What would silently become wrong data is refused: a column name that
appears twice (one of the two would be dropped), a list in a text or label cell, an inferred label that spells a
missing value ("nan", "null", ...: it would become a class). Parquet binary cells are decoded as UTF-8 text.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from lightning_adapters.errors import UserInputError, first_line


@dataclass
class Table:
    """The columns of one file or hub split, and where each row starts in its source (for error messages)."""

    source: str  # e.g. "train_file 'data/train.csv'"
    columns: dict[str, list[Any]]
    lines: list[int]
    unit: str = "line"

    def where(self, row: int) -> str:
        return f"{self.source} {self.unit} {self.lines[row]}"

    def column(self, name: str, option: str) -> list[Any]:
        if name not in self.columns:
            raise UserInputError(f"{self.source} has no column '{name}' (columns: {', '.join(self.columns) or 'none'})"
                                 f" — set {option} to one of them")
        return self.columns[name]


def rows_table(rows: list[dict[str, Any]], source: str, required: tuple[str, ...] = ()) -> Table:
    """In-memory rows (dicts, e.g. given to `lightning_adapters.Predictor`) as a table, numbered from 0 like the list.
    Every row must have the same keys (a key missing from one row is more likely a typo than a missing value),
    among them the ``required`` columns."""
    names = list(rows[0]) if rows else []
    for number, row in enumerate(rows):
        if set(row) != set(names):
            raise UserInputError(f"{source}: row {number} has columns ({', '.join(map(str, row)) or 'none'}), row 0 "
                                 f"has ({', '.join(names)}) — give every row the same columns")
    missing = [name for name in required if name not in names]
    if missing:
        raise UserInputError(f"{source} have no '{missing[0]}' column (columns given: {', '.join(names) or 'none'}) "
                             f"— give every row {', '.join(repr(name) for name in required)}")
    return Table(source, {name: [row[name] for row in rows] for name in names}, list(range(len(rows))), "row")


# Python's csv refuses fields over 128 KiB as "field larger than field limit"; a long filing or transcript is one
# field, not a quoting error. 2**31 - 1: the largest limit a C long takes on every platform (Windows included).
FIELD_SIZE_LIMIT = 2**31 - 1


def read_delimited(path: Path, source: str, delimiter: str = ",") -> Table:
    """CSV or TSV with a header row; every row must have as many fields as the header (Python `csv` quoting)."""
    rows, lines, sep = [], [], "tab" if delimiter == "\t" else f"'{delimiter}'"
    previous_limit = csv.field_size_limit(FIELD_SIZE_LIMIT)  # restored below: the limit is process-wide
    try:
        with open(path, newline="", encoding="utf-8-sig") as file:  # -sig drops the BOM that Excel writes
            reader = csv.reader(file, delimiter=delimiter)
            header = next(reader, [])
            _check_header(header, f"{source} line 1")
            start = reader.line_num + 1
            for row in reader:
                if row and len(row) != len(header):
                    raise UserInputError(f"{source} line {start}: expected {len(header)} fields ({', '.join(header)}),"
                                         f" found {len(row)} — quote values that contain {sep} or a quote")
                if row:  # csv yields [] for a blank line
                    rows.append(row)
                    lines.append(start)
                start = reader.line_num + 1  # a quoted value may span lines: report where the record starts
    except csv.Error as err:
        raise UserInputError(f"{source} line {reader.line_num}: malformed row ({err}) — fix the quoting there") from err
    except UnicodeDecodeError as err:
        raise UserInputError(f"{source} is not UTF-8 ({err.reason} at byte {err.start}) — save it as UTF-8") from err
    finally:
        csv.field_size_limit(previous_limit)
    return Table(source, {name: [row[i] for row in rows] for i, name in enumerate(header)}, lines)


def _check_header(header: list[str], where: str) -> None:
    """A repeated column name would silently keep one of its columns (the last, in a dict): refuse it."""
    repeated = [name for name, count in Counter(header).items() if count > 1]
    if repeated:
        raise UserInputError(f"{where}: column '{repeated[0]}' appears {header.count(repeated[0])} times in "
                             "the header — rename or remove the extra column(s)")


def read_jsonl(path: Path, source: str) -> Table:
    """JSON Lines: one object per line; keys are columns."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise UserInputError(f"{source} is not UTF-8 ({err.reason} at byte {err.start}) — save it as UTF-8") from err
    records, lines = [], []
    for number, line in enumerate(text.split("\n"), 1):  # not splitlines(): JSON strings may hold raw U+2028
        if not line.strip():
            continue
        try:
            record = json.loads(line, object_pairs_hook=_no_repeated_keys)
        except json.JSONDecodeError as err:
            raise UserInputError(f"{source} line {number}: invalid JSON ({err.msg}) — one object per line") from err
        except RecursionError as err:  # the parser recurses once per nesting level
            raise UserInputError(f"{source} line {number}: nests too deeply to be a row — one flat object per "
                                 "line") from err
        except KeyError as err:
            raise UserInputError(f"{source} line {number}: key {err} appears twice in one object — keep one") from err
        if not isinstance(record, dict):
            raise UserInputError(f"{source} line {number}: expected a JSON object, found {type(record).__name__}"
                                 " — write one object per line")
        records.append(record)
        lines.append(number)
    names = list(dict.fromkeys(key for record in records for key in record))
    return Table(source, {name: [record.get(name) for record in records] for name in names}, lines)


def _no_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json's default keeps the last of two equal keys silently; a KeyError here names the key."""
    record = dict(pairs)
    if len(record) != len(pairs):
        raise KeyError(next(key for key, count in Counter(key for key, _ in pairs).items() if count > 1))
    return record


def read_parquet(path: Path, source: str) -> Table:
    import pandas as pd
    import pyarrow.parquet as pq

    try:
        _check_header([str(name) for name in pq.read_schema(path).names], source)
        frame = pd.read_parquet(path)
    except UserInputError:
        raise
    except Exception as err:  # pyarrow raises several unrelated types for a file that is not parquet
        reason = first_line(err)
        raise UserInputError(f"cannot read {source} as parquet ({reason}) — pass a parquet file") from err
    # Binary columns come back as bytes, which str() would turn into "b'...'": decode the UTF-8 ones here.
    columns = {str(c): [_decoded(value) for value in frame[c].tolist()] for c in frame.columns}
    return Table(source, columns, list(range(1, len(frame) + 1)), "row")


def _decoded(value: Any) -> Any:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value  # not text (an image, say): `cell_text` refuses it if it is read as text
    return value


READERS = {".csv": read_delimited, ".tsv": partial(read_delimited, delimiter="\t"), ".jsonl": read_jsonl,
           ".json": read_jsonl, ".parquet": read_parquet}


def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


# How spreadsheets, pandas and databases write a missing value; as an inferred label each would become a class.
MISSING_MARKERS = {"nan", "-nan", "null", "none", "n/a", "na", "#n/a", "<na>"}


def cell_text(value: Any, where: str, column: str) -> str:
    """One cell as text ("" when missing). Bytes are decoded as UTF-8; a list or mapping is refused: str() of it
    would be read as one odd value (a label "['pos']", a text "b'...'")."""
    if is_missing(value):
        return ""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as err:
            raise UserInputError(f"{where}: column '{column}' holds binary data, not UTF-8 text — store text in that "
                                 "column") from err
    if isinstance(value, list | tuple | dict | set) or getattr(value, "ndim", 0) > 0:  # ndim: numpy arrays (parquet)
        shown = str(list(value) if getattr(value, "ndim", 0) else value)
        raise UserInputError(f"{where}: column '{column}' holds a list ({shown[:60]}), not one value — write one "
                             "value per row")
    return str(value)


def column_texts(table: Table, column: str, option: str) -> list[str]:
    """The cells of ``column`` as text (`cell_text`); a missing cell is ""."""
    return [cell_text(value, table.where(row), column) for row, value in enumerate(table.column(column, option))]


def column_labels(table: Table, column: str, option: str) -> list[str]:
    """The label cells of ``column`` as stripped names; 2.0 (an int column with gaps, read by pandas) is "2"."""
    values = [int(v) if isinstance(v, float) and v.is_integer() else v for v in table.column(column, option)]
    return [cell_text(value, table.where(row), column).strip() for row, value in enumerate(values)]


def _as_int(name: str) -> int | None:
    return int(name) if re.fullmatch(r"-?[0-9]+", name) else None  # not int(): it also reads "1_0" and "²"


def infer_label_names(names: list[str], table: Table) -> list[str]:
    """Sorted distinct labels (of `column_labels`): numerically when they are all integers (so 10 follows 9), else
    as strings. A value that spells a missing one ("nan", "null", ...) is refused: it would become a class."""
    missing = next((row for row, name in enumerate(names) if name.lower() in MISSING_MARKERS), None)
    if missing is not None:
        raise UserInputError(f"{table.where(missing)}: label '{names[missing]}' looks like a missing value — fill in "
                             "the label or remove the row (or list it in label_names if it is a real class)")
    distinct = sorted(set(names) - {""})
    return sorted(distinct, key=int) if all(_as_int(n) is not None for n in distinct) else distinct


def label_ids(names: list[str], table: Table, label_names: list[str]) -> list[int]:
    """Map label names (of `column_labels`) to ids; a column of integers that are not all names is read as indices
    into label_names."""
    index = {name: i for i, name in enumerate(label_names)}
    if all(name in index for name in names):
        return [index[name] for name in names]
    shown = ", ".join(label_names[:8]) + (", ..." if len(label_names) > 8 else "")
    empty = next((row for row, name in enumerate(names) if not name), None)
    if empty is not None:
        raise UserInputError(f"{table.where(empty)}: empty label — fill it in or remove the row")
    ints = [_as_int(name) for name in names]
    if all(i is not None for i in ints):
        bad = next((row for row, i in enumerate(ints) if not 0 <= i < len(label_names)), None)
        if bad is None:
            return ints
        raise UserInputError(f"{table.where(bad)}: label index {ints[bad]} is out of range for {len(label_names)} "
                             f"label names ({shown}) — fix the row or pass label_names")
    bad = next(row for row, name in enumerate(names) if name not in index)
    raise UserInputError(f"{table.where(bad)}: label '{names[bad]}' is not one of the label names ({shown}) — fix "
                         "the row or add it to label_names")
