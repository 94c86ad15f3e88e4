"""What the subcommands with parsers of their own (``serve``, ``tune``, ``place``) share: bad input in one line."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad option in one line naming ``--help`` (its usage is there), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} — see {self.prog} --help\n")


def fail(prog: str, line: str) -> NoReturn:
    """End the command as every subcommand ends on bad input: one line on stderr, exit status 2."""
    print(f"{prog}: error: {line}", file=sys.stderr)
    sys.exit(2)


def require_config(cli: OneLineParser, fit_args: list[str]) -> None:
    """``tune`` and ``place`` pass their unknown options to fit, which needs the experiment."""
    if not any(arg == "--config" or arg.startswith("--config=") for arg in fit_args):
        cli.error("give the experiment with --config FILE (as for fit)")
