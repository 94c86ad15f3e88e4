"""``lightning-adapters serve --adapters NAME=DIR ...``: the command line of `lightning_adapters.serve`.

Everything that can be checked before a model loads is checked here, and a problem ends the command with one line
on stderr and exit status 2 (as the other subcommands): a malformed ``NAME=DIR``, a name given twice, a folder that
is not an adapter folder, adapters trained on different bases, a missing LitServe.
"""

from __future__ import annotations

import argparse
import signal

from lightning_adapters.command_line import OneLineParser, fail
from lightning_adapters.errors import UserInputError, first_line
from lightning_adapters.serve import build_server, read_adapters, require_litserve

PROG = "lightning-adapters serve"


def positive(kind):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text} is not above 0")
        return value
    parse.__name__ = kind.__name__
    return parse


def parser() -> argparse.ArgumentParser:
    cli = OneLineParser(prog=PROG, description="Serve several adapters of one base model over HTTP (LitServe): "
                        "POST /predict {\"adapter\": NAME, \"text\": \"...\"} or {\"adapter\": NAME, \"inputs\": "
                        "[...]}; POST /stream (generation adapters: JSON lines as the text is generated); "
                        "GET /adapters; GET /health.")
    cli.add_argument("--adapters", nargs="+", required=True, metavar="NAME=DIR",
                     help="adapter folders (save_adapter / fit exports), each under the name requests use; the first "
                          "one's base is loaded once and every other must share it")
    cli.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    cli.add_argument("--port", type=int, default=8000)
    cli.add_argument("--max-batch-size", type=positive(int), default=16,
                     help="requests gathered into one dynamic batch")
    cli.add_argument("--batch-timeout", type=float, default=0.01,
                     help="seconds a batch waits for more requests before it runs")
    cli.add_argument("--workers", type=positive(int), default=1, help="worker processes, each holding the model")
    cli.add_argument("--max-chars", type=positive(int), default=10_000,
                     help="longest input (characters) a request may carry: 413 above it")
    cli.add_argument("--max-inputs", type=positive(int), default=64, help="most inputs in one request: 413 above it")
    cli.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu", help="where the workers run")
    cli.add_argument("--threads", type=positive(int), default=None,
                     help="torch threads per CPU worker (default: the cores divided among the workers and the HTTP "
                          "process, at least 1)")
    cli.add_argument("--no-stream", dest="stream", action="store_false",
                     help="no POST /stream route (its worker holds the base a second time, with the generation "
                          "adapters that stream)")
    cli.add_argument("--timeout", type=positive(float), default=30.0,
                     help="seconds a request may wait for its answer (504 after)")
    return cli


def split_pairs(values: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for value in values:
        name, sep, folder = value.partition("=")
        if not sep or not name or not folder:
            raise UserInputError(f"--adapters {value!r} is not NAME=DIR — e.g. --adapters sentiment=runs/sentiment")
        pairs.append((name, folder))
    return pairs


def main(argv: list[str]) -> None:
    cli = parser()
    args = cli.parse_args(argv)
    if not 0 <= args.batch_timeout < args.timeout:  # LitServe would raise a traceback for the second
        cli.error(f"--batch-timeout {args.batch_timeout} must be at least 0 and below --timeout {args.timeout}")
    if not 0 <= args.port <= 65535:
        cli.error(f"--port {args.port} is not a TCP port (0-65535)")
    try:
        require_litserve()
        adapters = read_adapters(split_pairs(args.adapters))
        server = build_server(adapters, args.max_batch_size, args.batch_timeout, args.workers, args.max_chars,
                              args.max_inputs, args.device, args.timeout, args.threads, args.stream)
    except UserInputError as err:
        fail(PROG, first_line(err))
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    server.run(host=args.host, port=args.port, generate_client_file=False)


def stop_on_sigterm(signum, frame):
    """LitServe shuts its HTTP and worker processes down on Ctrl-C (KeyboardInterrupt); a plain SIGTERM (``kill``,
    systemd, docker stop) would end this process only and leave them holding the port and the model."""
    raise KeyboardInterrupt
