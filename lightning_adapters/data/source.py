"""Where a DataModule's rows come from: split files and/or a Hub dataset, read once and checked once.

One implementation for every codec: the Hub's splits first, then each ``<split>_file`` (it must exist, and it wins
over the Hub's split); a local table is read by its extension (`read_table`); a table without rows is refused.
Everything fails in ``__init__`` with one `UserInputError` line naming the option, file and fix, before Lightning
creates a log folder. Missing validation/test splits are carved afterwards by `lightning_adapters.data.splits`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, TypeVar

from lightning_adapters.data.readers import READERS, Table
from lightning_adapters.errors import UserInputError, first_line

SPLITS = ("train", "validation", "test", "predict")
HUB_SPLITS = {"train": "train", "validation": "validation", "valid": "validation", "dev": "validation", "test": "test"}
Rows = TypeVar("Rows")
# True while a DataModule is built only to encode in-memory rows (`SplitDataModule.for_rows`): no split is needed.
_NO_SPLITS_NEEDED: ContextVar[bool] = ContextVar("no_splits_needed", default=False)


@contextmanager
def without_splits() -> Iterator[None]:
    """Inside, `read_splits` accepts being given no split at all (its ``nothing`` error is for training runs)."""
    token = _NO_SPLITS_NEEDED.set(True)
    try:
        yield
    finally:
        _NO_SPLITS_NEEDED.reset(token)


def existing_file(option: str, name: str) -> Path:
    """The path of option ``option``, which must name an existing file."""
    path = Path(name).expanduser()
    if not path.is_file():
        raise UserInputError(f"{option} not found: '{name}' — pass an existing file")
    return path


def read_table(path: Path, source: str, readers: Mapping[str, Callable[[Path, str], Table]] = READERS) -> Table:
    """One local table, read by its extension (``readers``: a pack may add formats); it must hold rows."""
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise UserInputError(f"unsupported file type '{path.suffix}' for {source} — use {', '.join(readers)}")
    return with_rows(reader(path, source))


def with_rows(table: Table) -> Table:
    """``table``, refused when it holds no rows."""
    if not table.lines:
        raise UserInputError(f"{table.source} is empty (no data rows) — pass data with a header and rows")
    return table


def read_splits(files: Mapping[str, str | None], read: Callable[[Path, str, str], Rows],
                hub: dict[str, Rows] | None = None, nothing: str | None = None) -> dict[str, Rows]:
    """The rows of each split: ``hub``'s, then each given file of ``files`` (split -> name), read by
    ``read(path, source, split)``. ``nothing``: the error when no split is given at all (not raised inside
    `without_splits`)."""
    rows = dict(hub or {})
    for split in SPLITS:
        name = files.get(split)
        if name is not None:
            option = f"{split}_file"
            rows[split] = read(existing_file(option, name), f"{option} '{name}'", split)
    if not rows and nothing and not _NO_SPLITS_NEEDED.get():
        raise UserInputError(nothing)
    return rows


def load_hub_splits(name: str, config: str | None, local_hint: str = "local files") -> dict[str, tuple[str, Any]]:
    """``{split: (source description, datasets.Dataset)}`` for a Hub dataset's train/validation/test splits
    (``valid``/``dev`` become ``validation``; other splits are ignored). Needs the network."""
    import datasets

    try:
        loaded = datasets.load_dataset(name, config)
    except Exception as err:  # offline, unknown id, bad config...: all fixed by the user
        reason = first_line(err)
        raise UserInputError(f"cannot load hub dataset '{name}' (config {config}): {reason} — check the id and "
                             f"config, or pass {local_hint}") from err
    return {HUB_SPLITS[split_name]: (f"hub dataset '{name}' split '{split_name}'", split)
            for split_name, split in loaded.items() if split_name in HUB_SPLITS}


def hub_tables(name: str, config: str | None, class_column: str | None = None
               ) -> tuple[dict[str, Table], list[str] | None]:
    """A Hub dataset's splits as tables (rows numbered from 1), and the class names of ``class_column`` when it is a
    ``ClassLabel`` (its integers are then read as those names, whatever label names the user gives)."""
    import datasets

    tables, class_names = {}, None
    for split, (source, dataset) in load_hub_splits(name, config).items():
        columns = {column: dataset[column] for column in dataset.column_names}
        feature = dataset.features.get(class_column) if class_column else None
        if isinstance(feature, datasets.ClassLabel):
            class_names = list(feature.names)
            columns[class_column] = [feature.int2str(int(v)) for v in columns[class_column]]
        tables[split] = with_rows(Table(source, columns, list(range(1, len(dataset) + 1)), "row"))
    return tables, class_names
