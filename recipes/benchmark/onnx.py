"""Deploy cost (issue 13): ONNX Runtime vs PyTorch eager classification throughput, as a ratio.

    python recipes/benchmark/onnx.py                  # -> recipes/benchmark/results/onnx/{results.md,results.json}
    python recipes/benchmark/onnx.py --int8           # also the int8 (dynamically quantized) model
    python recipes/benchmark/onnx.py --quick          # smoke test: 0.5 s per setting

Setup: MiniLM (the ``minilm`` alias, the bundled all-MiniLM-L6-v2) with a LoRA adapter (r=8, default targets) and a
3-label `ClassificationHead`, adapter and head weights randomised (not the identity they start as), in eval mode. It
is exported once with `lightning_adapters.onnx_export.export_onnx` (fp32, verified against PyTorch) and run by
ONNX Runtime's CPU provider with its default graph optimisations. A batch is ``--batch-sizes`` rows of exactly
``--seq-len`` real tokens (sentences of the bundled ``tasks/finance_sentiment/sample/test.csv``, no padding).

Time (one process; at each of ``--threads`` thread counts, the same for both: ``torch.set_num_threads`` and ONNX
Runtime's ``intra_op_num_threads``; 2 and 1 by default, since on a shared 2-core machine two threads wait on each
other whenever another process holds a core, which can slow a PyTorch call several-fold): PyTorch runs the same
computation the ONNX graph holds (`onnx_export.HeadOutputs`: input ids and mask -> logits) under
``torch.inference_mode()``. After ``--warmup`` calls each, the runtimes alternate call by call for ``--seconds`` per
batch size (at least ``--min-calls`` calls each); the figure is the median seconds per call, throughput is rows /
median, and the ratio is ONNX Runtime's throughput over PyTorch's, taken in the same rounds. The machine's load
average before and after is reported: on a shared CPU, absolute figures move with it; the ratio less.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _report  # noqa: E402

# This file is called onnx.py: with its folder on sys.path (python puts it first), `import onnx` in export_onnx
# would import this script instead of the onnx package. Its folder leaves sys.path once _report is imported.
sys.path[:] = [p for p in sys.path if Path(p or os.curdir).resolve() != HERE]

BENCHMARK = "onnx"
TASK = "sentence classification (3 labels, MiniLM + LoRA r=8)"
SAMPLE = Path(__file__).resolve().parents[2] / "tasks" / "finance_sentiment" / "sample" / "test.csv"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="minilm")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=4.0, help="timing per batch size, both runtimes together")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--min-calls", type=int, default=9, help="per runtime and batch size, however long it takes")
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1],
                        help="thread counts, each timed for both runtimes")
    parser.add_argument("--int8", action="store_true", help="also time the int8 ONNX model")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=_report.default_out(BENCHMARK))
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.warmup, args.min_calls = 0.5, 1, 3
    return args


def build_module(backbone: str):
    from lightning_adapters import AdapterModule, Lora

    module = AdapterModule(backbone, strategy=Lora(r=8), label_names=["negative", "neutral", "positive"])
    torch.manual_seed(0)
    with torch.no_grad():
        for _, param in module.trainable_parameters():  # LoRA's B starts at zero: the identity
            param.add_(torch.randn_like(param) * 0.02)
    return module.eval()


def make_batch(backbone: str, rows: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``rows`` rows of exactly ``seq_len`` real tokens: sentence i of the sample, then the next ones, truncated."""
    from lightning_adapters.backbone import load_tokenizer

    with open(SAMPLE, newline="", encoding="utf-8") as f:
        sentences = [row["sentence"] for row in csv.DictReader(f)]
    texts = [" ".join(sentences[(i + j) % len(sentences)] for j in range(8)) for i in range(rows)]
    enc = load_tokenizer(backbone)(texts, truncation=True, max_length=seq_len, padding="max_length",
                                   return_tensors="pt")
    if not bool(enc["attention_mask"].all()):
        raise SystemExit(f"some rows are shorter than {seq_len} tokens: use a smaller --seq-len")
    return enc["input_ids"], enc["attention_mask"]


def time_alternating(calls: dict[str, Callable[[], Any]], seconds: float, warmup: int,
                     min_calls: int) -> dict[str, list[float]]:
    """Each call once per round, the order alternating each round, until ``seconds`` have passed and each ran
    ``min_calls`` times; seconds per call."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    names, times = list(calls), {name: [] for name in calls}
    end, r = time.perf_counter() + seconds, 0
    while time.perf_counter() < end or r < min_calls:
        for name in names if r % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - start)
        r += 1
    return times


def sessions_for(paths: dict[str, Path], threads: int) -> dict[str, Any]:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    # ONNX Runtime's workers spin for a while after each call by default; with calls alternating on few cores that
    # would steal CPU from the PyTorch call that follows, and flatter ONNX Runtime.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return {name: onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            for name, path in paths.items()}


def measure(args: argparse.Namespace, module, paths: dict[str, Path]) -> tuple[list[dict], list[list[Any]]]:
    """Records and table rows for every thread count and batch size."""
    from lightning_adapters.onnx_export import HeadOutputs

    wrapper, records, rows = HeadOutputs(module).eval(), [], []
    for threads in args.threads:
        torch.set_num_threads(threads)
        sessions = sessions_for(paths, threads)
        setup = f"{args.seq_len} tokens/row, {threads} threads, {_report.hardware()}; {_report.versions()}"
        for batch_size in args.batch_sizes:
            ids, mask = make_batch(args.backbone, batch_size, args.seq_len)
            feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}

            def eager(ids=ids, mask=mask) -> np.ndarray:
                with torch.inference_mode():
                    return wrapper(ids, mask).numpy()

            calls = {"PyTorch eager": eager}
            calls.update({name: (lambda s=session, f=feed: s.run(None, f)[0]) for name, session in sessions.items()})
            expected = eager()
            times = time_alternating(calls, args.seconds, args.warmup, args.min_calls)
            base = statistics.median(times["PyTorch eager"])
            for name, call in calls.items():
                median, diff = statistics.median(times[name]), float(np.abs(call() - expected).max())
                rows.append([threads, batch_size, name, f"{1000 * median:.1f}", f"{batch_size / median:.0f}",
                             f"**{base / median:.2f}x**", f"{diff:.1e}", len(times[name])])
                for metric, value, unit in (("latency", 1000 * median, "ms/batch"),
                                            ("throughput", batch_size / median, "rows/s"),
                                            ("throughput vs PyTorch eager", base / median, "ratio"),
                                            ("max abs logit diff vs PyTorch", diff, "logit")):
                    records.append(_report.record(BENCHMARK, TASK, f"{name}, batch {batch_size}, {threads} threads",
                                                  metric, value, unit, setup))
    return records, rows


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    _report.setup_runtime(args.threads[0])
    from lightning_adapters.onnx_export import export_onnx

    start, load_start = time.perf_counter(), os.getloadavg()[0]
    module = build_module(args.backbone)
    with tempfile.TemporaryDirectory() as tmp:
        exports = [export_onnx(module, Path(tmp) / "model.onnx")]
        if args.int8:
            exports.append(export_onnx(module, Path(tmp) / "model-int8.onnx", precision="int8"))
        export_s = time.perf_counter() - start
        records, rows = measure(args, module, {f"ONNX Runtime {e.precision}": e.path for e in exports})
    load = (load_start, os.getloadavg()[0])
    table = _report.markdown_table(["threads", "batch", "runtime", "ms/batch", "rows/s", "throughput vs PyTorch",
                                    "max abs logit diff", "calls timed"], rows)
    text = (f"# ONNX Runtime vs PyTorch eager: {TASK}\n\n{table}\n\n"
            f"Setup: {records[0]['setup'].replace(f'{args.threads[0]} threads, ', '')}; rows of exactly "
            f"{args.seq_len} real tokens; median of calls alternating for {args.seconds:g} s per batch size (at least "
            f"{args.min_calls} calls each). Load average (1 min) {load[0]:.1f} before, {load[1]:.1f} after (shared "
            f"CPU). Export + verification took {export_s:.0f} s.\n\n"
            f"Command: `python recipes/benchmark/onnx.py {' '.join(argv if argv is not None else sys.argv[1:])}`\n")
    args.out.mkdir(parents=True, exist_ok=True)
    _report.write_json(args.out, records)
    (args.out / "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
