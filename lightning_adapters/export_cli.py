"""``lightning-adapters export --adapter DIR --merged OUT``: turn an exported adapter folder into a deployable form.

One option per output form (`OUTPUTS`): the name of its flag, its help, and the function that writes it from an
adapter folder and the parsed options: ``--merged OUT`` (a plain Hugging Face folder) and ``--onnx OUT`` (one ONNX
file and its sidecar). Adding a form is one more entry. Bad input is one line on stderr and exit status 2,
as in the rest of the CLI; argparse's own usage errors are turned into that line too.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import transformers

from lightning_adapters.errors import UserInputError
from lightning_adapters.merged_export import export_merged
from lightning_adapters.onnx_export import PRECISIONS, export_onnx

# flag -> (help, writer(out, parsed options) -> what was written)
OUTPUTS: dict[str, tuple[str, Callable[[str, argparse.Namespace], Path]]] = {
    "merged": ("write OUT: a plain Hugging Face model folder (config.json, model.safetensors, tokenizer) with the "
               "adapter folded into the base weights (LoRA, IA3, full fine-tuning); load it with "
               "AutoModelFor<Task>.from_pretrained(OUT)",
               lambda out, args: export_merged(args.adapter, out, backbone=args.backbone)),
    "onnx": ("write OUT (a .onnx file) and OUT.json: the adapted model and its head for ONNX Runtime, any strategy, "
             "dynamic batch and sequence axes, checked against PyTorch before it is written",
             lambda out, args: export_onnx(args.adapter, out, precision=args.precision, backbone=args.backbone).path),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints usage and exits; we want our one line
        raise UserInputError(f"{message} — see lightning-adapters export --help")


def parser() -> argparse.ArgumentParser:
    parsed = _Parser(prog="lightning-adapters export",
                     description="Export an adapter folder (what fit writes to <run folder>/adapter) for deployment.")
    parsed.add_argument("--adapter", required=True, metavar="DIR", help="the adapter folder to export")
    parsed.add_argument("--backbone", metavar="NAME",
                        help="another copy of the adapter's base model (default: the one recorded in the folder)")
    parsed.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="--onnx only: fp32 (default), fp16, or int8 (dynamic quantization; its drift is reported)")
    forms = parsed.add_mutually_exclusive_group(required=True)
    for flag, (text, _) in OUTPUTS.items():
        forms.add_argument(f"--{flag}", metavar="OUT", help=text)
    return parsed


def main(argv: list[str]) -> None:
    """Run ``lightning-adapters export`` with ``argv`` (the words after ``export``)."""
    if not sys.stderr.isatty():  # transformers' weight-loading bar, redrawn in place, garbles a log file
        transformers.utils.logging.disable_progress_bar()
    try:
        args = parser().parse_args(argv)
        flag = next(flag for flag in OUTPUTS if getattr(args, flag) is not None)
        if args.precision is not None and flag != "onnx":
            raise UserInputError(f"--precision applies to --onnx, not --{flag} — drop it")
        args.precision = args.precision or "fp32"
        written = OUTPUTS[flag][1](getattr(args, flag), args)
    except UserInputError as err:
        print(f"lightning-adapters: error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {written}")
