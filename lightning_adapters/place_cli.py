"""``lightning-adapters place --config FILE --budget K [fit options]``: rank the layers for a task with the gradient
probe (`lightning_adapters.placement`) and write the strategy with the ``budget`` best layers chosen, as a fragment
for ``fit --model.init_args.strategy FILE``.

Every option place does not know is a fit option: the same config, strategy and data as the run that will use the
choice. Bad input is one line on stderr and exit status 2, and nothing is written.
"""

from __future__ import annotations

import argparse
import itertools
import json
import warnings
from pathlib import Path

import lightning as L
import yaml

from lightning_adapters.atomic import atomic_write
from lightning_adapters.command_line import OneLineParser, fail, require_config
from lightning_adapters.lightning_cli import build_cli, cli_error_line
from lightning_adapters.placement import choose_layers, layer_scores, ranked

PROG = "lightning-adapters place"


def parser() -> argparse.ArgumentParser:
    cli = OneLineParser(prog=PROG, usage=f"{PROG} --config FILE --budget K [--batches N] [--output FILE] "
                        "[fit options ...]",
                        description="Rank the layers for a task by the gradient of the loss over each layer's "
                        "adapter weights at initialisation, on a few training batches, and write the strategy with "
                        "the BUDGET best layers (a fragment for fit --model.init_args.strategy).")
    cli.add_argument("--budget", type=int, required=True, help="how many layers keep adapters")
    cli.add_argument("--batches", type=int, default=8, help="training batches the probe runs (default 8)")
    cli.add_argument("--output", default="placement.yaml",
                     help="the strategy fragment to write (default placement.yaml); the scores go beside it as JSON")
    return cli


def main(argv: list[str]) -> None:
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    cli = parser()
    args, fit_args = cli.parse_known_args(argv)
    if args.batches < 1:
        cli.error("--batches must be at least 1")
    require_config(cli, fit_args)
    try:
        built = build_cli(fit_args, run=False)
        module, data = built.model, built.datamodule
        if built.config.get("seed_everything") is not None:
            L.seed_everything(built.config["seed_everything"], verbose=False)
        data.prepare_data()  # e.g. augmentation's paraphrase cache, as Trainer.fit would
        data.setup("fit")
        scores = layer_scores(module, itertools.islice(data.train_dataloader(), args.batches))
        chosen = choose_layers(scores, args.budget)
    except Exception as err:  # noqa: BLE001 — re-raised below unless it is bad user input
        line = cli_error_line(err, fit_args)
        if line is None:
            raise
        fail(PROG, line.splitlines()[0])
    fragment = module.strategy.hparams()
    fragment["init_args"]["layers"] = chosen
    output = Path(args.output)
    header = (f"# Written by {PROG} (budget {args.budget}, {args.batches} batches): the strategy with the layers the "
              "gradient probe ranks best.\n# Use it: lightning-adapters fit ... --model.init_args.strategy "
              f"{output}\n")
    atomic_write(output, lambda tmp: Path(tmp).write_text(header + yaml.safe_dump(fragment, sort_keys=False)))
    order = ranked(scores)
    atomic_write(output.with_suffix(".json"), lambda tmp: Path(tmp).write_text(json.dumps(
        {"scores": {str(index): scores[index] for index in scores}, "ranked": order, "chosen": chosen,
         "budget": args.budget, "batches": args.batches}, indent=2) + "\n"))
    for index in order:
        print(f"layer {index:>3}: {scores[index]:.3e}{'  <- chosen' if index in chosen else ''}")
    print(f"{PROG}: layers {chosen} written to {output}")
