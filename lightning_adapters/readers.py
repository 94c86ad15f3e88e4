"""Reading labelled text tables: CSV, TSV, JSON Lines and parquet, checked row by row.

A `Table` keeps where each row came from, so every error names the file, the line and the fix. Label values may be
names or integer indices into the label names.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from lightning_adapters.errors import UserInputError


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


def read_delimited(path: Path, source: str, delimiter: str = ",") -> Table:
    """CSV or TSV with a header row; every row must have as many fields as the header (Python `csv` quoting)."""
    rows, lines, sep = [], [], "tab" if delimiter == "\t" else f"'{delimiter}'"
    try:
        with open(path, newline="", encoding="utf-8-sig") as file:  # -sig drops the BOM that Excel writes
            reader = csv.reader(file, delimiter=delimiter)
            header = next(reader, [])
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
    return Table(source, {name: [row[i] for row in rows] for i, name in enumerate(header)}, lines)


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
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserInputError(f"{source} line {number}: invalid JSON ({err.msg}) — one object per line") from err
        if not isinstance(record, dict):
            raise UserInputError(f"{source} line {number}: expected a JSON object, found {type(record).__name__}"
                                 " — write one object per line")
        records.append(record)
        lines.append(number)
    names = list(dict.fromkeys(key for record in records for key in record))
    return Table(source, {name: [record.get(name) for record in records] for name in names}, lines)


def read_parquet(path: Path, source: str) -> Table:
    import pandas as pd

    try:
        frame = pd.read_parquet(path)
    except Exception as err:  # pyarrow raises several unrelated types for a file that is not parquet
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserInputError(f"cannot read {source} as parquet ({reason}) — pass a parquet file") from err
    return Table(source, {str(c): frame[c].tolist() for c in frame.columns}, list(range(1, len(frame) + 1)), "row")


READERS = {".csv": read_delimited, ".tsv": partial(read_delimited, delimiter="\t"), ".jsonl": read_jsonl,
           ".json": read_jsonl, ".parquet": read_parquet}


HUB_SPLITS = {"train": "train", "validation": "validation", "valid": "validation", "dev": "validation", "test": "test"}


def load_hub_splits(name: str, config: str | None, local_hint: str = "local files") -> dict[str, tuple[str, Any]]:
    """``{split: (source description, datasets.Dataset)}`` for a Hub dataset's train/validation/test splits
    (``valid``/``dev`` become ``validation``; other splits are ignored). Needs the network."""
    import datasets

    try:
        loaded = datasets.load_dataset(name, config)
    except Exception as err:  # offline, unknown id, bad config...: all fixed by the user
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserInputError(f"cannot load hub dataset '{name}' (config {config}): {reason} — check the id and "
                             f"config, or pass {local_hint}") from err
    return {HUB_SPLITS[split_name]: (f"hub dataset '{name}' split '{split_name}'", split)
            for split_name, split in loaded.items() if split_name in HUB_SPLITS}


def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _as_name(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():  # int columns with gaps come back from pandas as floats
        value = int(value)
    return "" if is_missing(value) else str(value).strip()


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        return int(_as_name(value))
    except ValueError:
        return None


def infer_label_names(values: list[Any]) -> list[str]:
    """Sorted distinct labels: numerically when they are all integers (so 10 follows 9), else as strings."""
    names = sorted({_as_name(v) for v in values} - {""})
    return sorted(names, key=int) if all(_as_int(n) is not None for n in names) else names


def label_ids(values: list[Any], table: Table, label_names: list[str]) -> list[int]:
    """Map label names to ids; a column of integers that are not all names is read as indices into label_names."""
    index = {name: i for i, name in enumerate(label_names)}
    names = [_as_name(v) for v in values]
    if all(name in index for name in names):
        return [index[name] for name in names]
    shown = ", ".join(label_names[:8]) + (", ..." if len(label_names) > 8 else "")
    ints = [_as_int(v) for v in values]
    if all(i is not None for i in ints):
        bad = next((row for row, i in enumerate(ints) if not 0 <= i < len(label_names)), None)
        if bad is None:
            return ints
        raise UserInputError(f"{table.where(bad)}: label index {ints[bad]} is out of range for {len(label_names)} "
                             f"label names ({shown}) — fix the row or pass label_names")
    bad = next(row for row, name in enumerate(names) if name not in index)
    what = f"label '{names[bad]}'" if names[bad] else "empty label"
    raise UserInputError(f"{table.where(bad)}: {what} is not one of the label names ({shown}) — fix the row or "
                         "add it to label_names")
