"""``lightning-adapters tune --config FILE --search SPACE.yaml --n-trials N [fit options]``: the command line of
`lightning_adapters.tune`.

Every argument tune does not know is a ``fit`` argument, given to every trial (``--trainer.max_epochs 3``, ...).
Bad input — a search space that does not read, a key fit does not accept, bad fit arguments, a storage that cannot
be opened — ends the command with one line on stderr and exit status 2 before any trial runs.
"""

from __future__ import annotations

import argparse
import re
import signal
import sys
import warnings
from pathlib import Path

from lightning.pytorch.utilities.exceptions import SIGTERMException

from lightning_adapters.command_line import OneLineParser, fail, require_config
from lightning_adapters.errors import UserInputError, first_line
from lightning_adapters.lightning_cli import cli_error_line
from lightning_adapters.tune import (
    config_judged_by,
    make_study,
    open_storage,
    parse_fit,
    read_search_space,
    require_optuna,
    run_study,
    storage_url,
    write_summary,
)

PROG = "lightning-adapters tune"


def parser() -> argparse.ArgumentParser:
    cli = OneLineParser(prog=PROG, usage=f"{PROG} --config FILE --search SPACE.yaml --n-trials N [options] "
                        "[fit options ...]",
                        description="Search fit's hyper-parameters with Optuna (TPE sampler, pruning on the "
                        "per-epoch validation metric); every unknown option goes to fit, for every trial.")
    cli.add_argument("--search", required=True, metavar="SPACE.yaml", help="the search space (see configs/search/)")
    cli.add_argument("--n-trials", type=int, required=True,
                     help="finished (complete or pruned) trials the study should hold, whichever process ran them")
    cli.add_argument("--study", default=None, help="study name (default: the search file's name)")
    cli.add_argument("--output", default=None,
                     help="where trials, the summary and best_adapter/ go (default: runs/tune/<study>)")
    cli.add_argument("--storage", default=None,
                     help="Optuna storage shared by every worker: sqlite:///FILE, a database URL "
                          "(postgresql://...), or journal:FILE (default: sqlite:///<output>/study.db)")
    cli.add_argument("--seed", type=int, default=0, help="the TPE sampler's seed")
    cli.add_argument("--no-pruning", dest="pruning", action="store_false",
                     help="run every trial to the end (the search file's pruner is not used)")
    cli.add_argument("--heartbeat", type=int, default=60,
                     help="seconds between a running trial's heartbeats in a database storage; a trial silent for "
                          "twice that is failed and run again")
    return cli


def main(argv: list[str]) -> None:
    # Each trial runs fit in this process with its own argument list: LightningCLI's warning about sys.argv holding
    # other arguments (tune's) does not apply.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    cli = parser()
    args, fit_args = cli.parse_known_args(argv)
    if args.n_trials < 1 or args.heartbeat < 1:
        cli.error("--n-trials and --heartbeat must be at least 1")
    require_config(cli, fit_args)
    name = args.study or Path(args.search).stem
    if not re.fullmatch(r"[\w.-]+", name):
        cli.error(f"--study {name!r} must be a word (letters, digits, '_', '-', '.')")
    output = Path(args.output or Path("runs") / "tune" / name)
    try:
        require_optuna()
        space = read_search_space(args.search)
        config = parse_fit(fit_args, space)
        metric, mode = config_judged_by(config)
        if args.storage is None:
            output.mkdir(parents=True, exist_ok=True)
        url = args.storage or f"sqlite:///{output.resolve() / 'study.db'}"
        storage = open_storage(url, args.heartbeat)
        study = make_study(name, storage, space, args.seed, mode, args.pruning, fit_args, metric)
        print(f"tune: study '{name}' in {storage_url(url)}: "
              f"{metric} ({'max' if mode == 'max' else 'min'}), {args.n_trials} trials; output {output}",
              flush=True)
        output.mkdir(parents=True, exist_ok=True)
        run_study(study, space, fit_args, output, args.n_trials, metric, mode)
        summary = write_summary(study, output, metric)
    except (SIGTERMException, KeyboardInterrupt) as stop:
        signal_name = "SIGTERM" if isinstance(stop, SIGTERMException) else "SIGINT (Ctrl-C)"
        print(f"{PROG}: error: stopped by {signal_name}; the study keeps its finished trials — run the same command "
              "to resume it", file=sys.stderr)
        sys.exit(128 + (signal.SIGTERM if isinstance(stop, SIGTERMException) else signal.SIGINT))
    except Exception as err:  # noqa: BLE001 — re-raised below unless it is bad user input
        line = cli_error_line(err, ["fit", *fit_args])
        if line is None:
            raise
        fail(PROG, first_line(UserInputError(line)))
    best = summary.get("best")
    counts = ", ".join(f"{count} {state.lower()}" for state, count in summary["trials"].items() if count)
    print(f"tune: {counts}; {summary['epochs']} epochs trained")
    if best:
        print(f"tune: best trial {best['trial']}: {metric} = {best['value']:.4f} with {best['params']}")
        print(f"tune: best adapter copied to {Path(best['adapter']).resolve()}; summary in {output / 'summary.json'}")
