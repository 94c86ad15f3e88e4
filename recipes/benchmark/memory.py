"""Gradient checkpointing of the frozen base: peak training memory and step time, with and without, on SmolLM2.

    python recipes/benchmark/memory.py              # -> recipes/benchmark/results/memory/{results.md,results.json}
    python recipes/benchmark/memory.py --quick      # smoke test: tiny batch, 1 step

Setup: SmolLM2-135M-Instruct (the ``smollm2`` alias, GGUF de-quantised to fp32), LoRA (r=8, default targets) +
sequence-classification head (last-token pooling), a batch of 8 sequences of exactly 256 tokens (real text: the
bundled finance-sentiment sample, concatenated), AdamW. A train step is forward + loss + backward + optimizer step.

Each setting runs in a fresh subprocess (the CPU allocator keeps freed pages, which would hide a second run's peak;
large allocations are forced onto mmap so that freed tensors leave the resident set): one warm-up step, then
``--steps`` measured steps. Memory: CUDA peak allocated, or on CPU the growth of the peak
resident set over the loaded model (activations + gradients + optimizer state; see ``_report.peak_memory_mib``).
Time: median step time of the measured steps. Both settings use the same seed, data and model.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _report  # noqa: E402

LABELS = ["negative", "neutral", "positive"]
SAMPLE = Path(__file__).resolve().parents[2] / "tasks" / "finance_sentiment" / "sample" / "train.csv"


def make_batch(backbone: str, batch_size: int, seq_len: int) -> dict[str, torch.Tensor]:
    """``batch_size`` windows of exactly ``seq_len`` tokens over the sample's sentences (no padding)."""
    import csv

    from lightning_adapters.backbone import load_tokenizer

    with open(SAMPLE, newline="", encoding="utf-8") as f:
        text = " ".join(row["sentence"] for row in csv.DictReader(f))
    ids = load_tokenizer(backbone)(text, add_special_tokens=False)["input_ids"]
    if len(ids) < batch_size * seq_len:
        raise SystemExit(f"the sample has {len(ids)} tokens, fewer than {batch_size} x {seq_len}")
    input_ids = torch.tensor(ids[: batch_size * seq_len]).view(batch_size, seq_len)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
            "labels": torch.arange(batch_size) % len(LABELS)}


def worker(args: argparse.Namespace, checkpointing: bool) -> dict[str, float]:
    """One setting in this process: (peak MiB, median step seconds)."""
    from lightning_adapters import AdapterModule, ClassificationHead, Lora

    _report.setup_runtime(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    torch.manual_seed(0)
    module = AdapterModule(args.backbone, strategy=Lora(r=8), head=ClassificationHead(dropout=0.0),
                           label_names=LABELS, gradient_checkpointing=checkpointing).to(device)
    batch = {k: v.to(device) for k, v in make_batch(args.backbone, args.batch_size, args.seq_len).items()}
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4)
    times: list[float] = []

    def step() -> None:
        start = time.perf_counter()
        module.head.loss(module(batch), batch).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)

    step()  # warm-up: lazy initialisation and optimizer state are not what we compare
    times.clear()
    peak = _report.peak_memory_mib(lambda: [step() for _ in range(args.steps)], device)
    return {"memory_mib": peak, "step_s": statistics.median(times), "device": _report.hardware()}


def run_setting(args: argparse.Namespace, checkpointing: bool) -> dict[str, float]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "on" if checkpointing else "off",
           "--backbone", args.backbone, "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len),
           "--steps", str(args.steps), "--threads", str(args.threads)] + (["--cpu"] if args.cpu else [])
    # glibc keeps freed heap pages resident (its mmap threshold grows with use), so the RSS after the warm-up step
    # would already hold that step's activations; a fixed threshold returns every large tensor's pages on free.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 16)}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def report(args: argparse.Namespace, results: dict[bool, dict[str, float]]) -> None:
    off, on = results[False], results[True]
    setup = (f"{args.backbone}, LoRA r=8 + classification head, batch {args.batch_size} x {args.seq_len} tokens, "
             f"{args.steps} measured steps after 1 warm-up, {off['device']}, {_report.versions()}")
    task = "train step"
    records = []
    for name, res in (("without gradient checkpointing", off), ("with gradient checkpointing", on)):
        records.append(_report.record("memory", task, name, "peak memory", round(res["memory_mib"], 1), "MiB", setup))
        records.append(_report.record("memory", task, name, "step time", round(res["step_s"], 3), "s", setup))
    # A tiny model's step can grow the resident set by less than the kernel's accounting shows (0 MiB, as in the
    # --quick test on a loaded machine): no ratio then, rather than a division by zero.
    mem_ratio = on["memory_mib"] / off["memory_mib"] if off["memory_mib"] > 0 else None
    time_ratio = on["step_s"] / off["step_s"]
    if mem_ratio is not None:
        records.append(_report.record("memory", task, "checkpointing / none", "peak memory ratio",
                                      round(mem_ratio, 3), "x", setup))
    records.append(_report.record("memory", task, "checkpointing / none", "step time ratio", round(time_ratio, 3),
                                  "x", setup))
    args.out.mkdir(parents=True, exist_ok=True)
    _report.write_json(args.out, records)
    rows = [["without", f"{off['memory_mib']:.0f}", f"{off['step_s']:.2f}", "1.00 / 1.00"],
            ["with", f"{on['memory_mib']:.0f}", f"{on['step_s']:.2f}",
             f"{'n/a' if mem_ratio is None else f'{mem_ratio:.2f}'} / {time_ratio:.2f}"]]
    table = _report.markdown_table(["gradient checkpointing", "peak memory (MiB)", "step time (s)",
                                    "memory / time vs without"], rows)
    check = (_report.check_line("checkpointing lowers peak memory", mem_ratio < 1, f"{mem_ratio:.2f} x")
             if mem_ratio is not None else "checkpointing lowers peak memory: not measurable (no growth without it)")
    command = "python recipes/benchmark/memory.py"
    text = f"# Gradient checkpointing\n\nSetup: {setup}.\n\nCommand: `{command}`\n\n{table}\n\n{check}\n"
    (args.out / "results.md").write_text(text)
    print(text)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="smollm2")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cpu", action="store_true", help="stay on the CPU even when a GPU is present")
    parser.add_argument("--quick", action="store_true", help="smoke test: batch 2 x 32, 1 step")
    parser.add_argument("--out", type=Path, default=_report.default_out("memory"))
    parser.add_argument("--worker", choices=["on", "off"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.batch_size, args.seq_len, args.steps = 2, 32, 1
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args, checkpointing=args.worker == "on")))
        return
    report(args, {flag: run_setting(args, flag) for flag in (False, True)})


if __name__ == "__main__":
    main()
