"""``lightning-adapters select --pool FILE [FILE ...] --target FILE --output FILE.jsonl --size N``: pick the pool
texts nearest to the target task in the frozen backbone's embedding space (`lightning_adapters.selection`) and write
them as JSON lines ``{"text", "score", "source", "row"}`` in selection order, for task-adaptive pretraining or
pseudo-labelling.

Pool and target are CSV, TSV, JSON Lines or parquet tables (a text column) or ``.txt`` files (one text per non-blank
line). ``--lines`` splits each pool cell into its lines (an ECTSum transcript holds one sentence per line). Blank pool
texts are dropped, and repeated ones kept once (a transcript's "Thank you." would otherwise fill the selection).
Bad input is one line on stderr and exit status 2, and nothing is written; the output appears whole or not at all.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from lightning_adapters.atomic import atomic_write, check_can_create
from lightning_adapters.command_line import OneLineParser, fail
from lightning_adapters.data.readers import column_texts
from lightning_adapters.data.source import existing_file, read_table
from lightning_adapters.data.text_corpus import cell_lines, text_readers
from lightning_adapters.errors import UserInputError
from lightning_adapters.selection import select_scored

PROG = "lightning-adapters select"


@dataclass(frozen=True)
class Text:
    """One pool text and where it came from (file, row or line number, and line within the cell for --lines)."""

    text: str
    source: str
    row: int
    line: int | None = None


def parser() -> argparse.ArgumentParser:
    cli = OneLineParser(prog=PROG, usage=f"{PROG} --pool FILE [FILE ...] --target FILE --output FILE.jsonl --size N "
                        "[options]",
                        description="Pick the SIZE pool texts nearest to the target texts in the frozen backbone's "
                        "embedding space (each target text's nearest neighbours in turn, kNN-TAPT) and write them as "
                        "JSON lines in selection order.")
    cli.add_argument("--pool", nargs="+", required=True, metavar="FILE",
                     help="the texts to choose from: .csv, .tsv, .jsonl, .parquet (see --pool-column) or .txt")
    cli.add_argument("--target", required=True, metavar="FILE", help="the target task's texts, same formats")
    cli.add_argument("--output", required=True, metavar="FILE.jsonl", help="the JSON lines file to write")
    cli.add_argument("--size", type=int, required=True, help="how many pool texts to select")
    cli.add_argument("--pool-column", default="text", help="the text column of pool tables (default text)")
    cli.add_argument("--target-column", default="text", help="the text column of the target table (default text)")
    cli.add_argument("--backbone", default="minilm", help="alias, model folder or hub id (default minilm)")
    cli.add_argument("--lines", action="store_true", help="split each pool cell into its lines, one text per line")
    cli.add_argument("--per-target", type=int, default=None, metavar="K",
                     help="take at most K neighbours of each target text (fewer than SIZE when they overlap)")
    cli.add_argument("--batch-size", type=int, default=64, help="texts embedded at once (default 64)")
    cli.add_argument("--max-length", type=int, default=128, help="tokens kept of each text (default 128)")
    cli.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    return cli


def main(argv: list[str]) -> None:
    args = parser().parse_args(argv)
    output = Path(args.output)
    try:
        check_output(output, args.overwrite)
        pool, dropped = pool_texts(args.pool, args.pool_column, args.lines)
        targets = [text.text for text in read_texts(args.target, "--target", args.target_column)]
        if not any(t.strip() for t in targets):
            raise UserInputError(f"--target '{args.target}' holds no text — pass the target task's texts")
        selection = select_scored(args.backbone, [text.text for text in pool], [t for t in targets if t.strip()],
                                  args.size, args.batch_size, args.max_length, args.per_target)
        scores = selection.scores.tolist()
        atomic_write(output, lambda tmp: Path(tmp).write_text(
            "".join(json.dumps(record(pool[i], scores[i]), ensure_ascii=False) + "\n" for i in selection.indices),
            encoding="utf-8"))
    except UserInputError as err:
        fail(PROG, str(err).splitlines()[0])
    chosen = selection.indices
    foreign = selection.language.foreign_share
    print(f"{PROG}: {len(chosen)} of {len(pool)} pool texts written to {output} (mean similarity to the target "
          f"{sum(scores[i] for i in chosen) / len(chosen):.3f}, whole pool {sum(scores) / len(scores):.3f}"
          + (f"; {dropped} blank or repeated texts dropped" if dropped else "")
          + (f"; {foreign:.0%} of the pool looks foreign to the tokenizer" if foreign else "") + ")")


def check_output(output: Path, overwrite: bool) -> None:
    """Refuse, before any work, an output that exists (without --overwrite) or could not be created."""
    if output.is_dir():
        raise UserInputError(f"--output '{output}' is a folder — pass a file path such as selected.jsonl")
    if output.exists() and not overwrite:
        raise UserInputError(f"--output '{output}' exists — pass --overwrite to replace it, or another path")
    check_can_create(output.parent, f"--output '{output}'")


def pool_texts(files: list[str], column: str, lines: bool) -> tuple[list[Text], int]:
    """The pool's texts from all ``files`` (split into lines with ``lines``), without blank and repeated texts, and
    how many were dropped."""
    texts = [part for name in files for text in read_texts(name, "--pool", column)
             for part in (split_lines(text) if lines else [text])]
    seen: set[str] = set()
    kept = [text for text in texts if text.text.strip() and not (text.text in seen or seen.add(text.text))]
    if not kept:
        raise UserInputError(f"the selection pool ({', '.join(files)}) holds no text: every "
                             f"{'line' if lines else 'cell'} is blank — pass files with text in them")
    return kept, len(texts) - len(kept)


def split_lines(text: Text) -> list[Text]:
    """One `Text` per non-blank line of a cell, numbered from 1 within the cell (as `TextCorpusDataModule` does)."""
    return [Text(line, text.source, text.row, number) for number, line in cell_lines(text.text)]


def read_texts(name: str, option: str, column: str) -> list[Text]:
    """The texts of one file: a table's ``column`` (numbered by the table's line or row), or a ``.txt`` file's
    non-blank lines (numbered by line)."""
    table = read_table(existing_file(option, name), f"{option} '{name}'", text_readers(column))
    cells = column_texts(table, column, f"--{option.lstrip('-')}-column")
    return [Text(cell, name, table.lines[row]) for row, cell in enumerate(cells)]


def record(text: Text, score: float) -> dict:
    """One output line: the text, its highest cosine similarity to a target text, and where it came from."""
    where = {"source": text.source, "row": text.row} | ({"line": text.line} if text.line is not None else {})
    return {"text": text.text, "score": round(score, 6)} | where
