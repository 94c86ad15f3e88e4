"""The ``lightning-adapters`` command: ``fit|validate|test|predict`` are LightningCLI's
(`lightning_adapters.lightning_cli`); ``export``, ``serve``, ``tune``, ``place`` and ``select`` have their own small
parsers.
"""

from __future__ import annotations

import sys

from lightning_adapters import export_cli, place_cli, select_cli, serve_cli, tune_cli
from lightning_adapters.lightning_cli import (  # noqa: F401 — their home before lightning_cli: imports keep working
    TRAINER_DEFAULTS,
    AdaptersCLI,
    check_yaml_size,
    run_cli,
)

OWN_PARSERS = {"export": export_cli.main, "serve": serve_cli.main, "tune": tune_cli.main, "place": place_cli.main,
               "select": select_cli.main}


def main(args: list[str] | None = None) -> None:
    """Console entry point (returns nothing: a returned object would become the process's exit status)."""
    argv = sys.argv[1:] if args is None else args
    if argv[:1] and argv[0] in OWN_PARSERS:
        OWN_PARSERS[argv[0]](argv[1:])
        return
    run_cli(args)


if __name__ == "__main__":  # python -m lightning_adapters.cli
    main()
