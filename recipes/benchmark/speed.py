"""Train-step time and peak memory of every strategy, ours and PEFT's same method, vs a frozen floor and full FT.

One command, everything measured in the same run so that the ratios are meaningful on any machine:

    python recipes/benchmark/speed.py                 # -> recipes/benchmark/results/speed/{results.md,json,png}
    python recipes/benchmark/speed.py --quick         # smoke test: tiny batch, 1 step per method, no memory

Setup: MiniLM (the ``minilm`` alias), a fixed batch of 32 real sentences tokenized to exactly 64 tokens, 3 labels,
the same head for every method (mask-aware mean pooling + dropout 0.1 + Linear, i.e. our `ClassificationHead`).
A train step is forward + cross-entropy + backward + AdamW step + zero_grad, model in train() mode.

Methods:
- ``frozen floor``: frozen backbone without adapters, but the embedding output requires grad so that the backward
  pass runs through every layer: the cheapest any adapter placed at the bottom of the network can be;
- ``full fine-tuning``: every backbone weight trainable;
- our strategies (bottleneck houlsby/pfeiffer/parallel, LoRA, IA3, prompt and prefix tuning) as `AdapterModule`, and
  PEFT's LoRA, IA3, prompt and prefix tuning via `peft.get_peft_model` on `transformers.AutoModel`, each pair with
  the same configuration (`strategies.py`).

Timing: a few warm-up steps per method, then R rounds; in each round every method runs S consecutive steps, the
method order rotating from round to round; the figure is the median step time over all R*S steps. Memory: each method
in its own process; CUDA: `torch.cuda.max_memory_allocated` (weights included); CPU: peak RSS during training
(VmHWM, reset after loading) minus the RSS of the loaded model, i.e. activations + gradients + optimizer state.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import resource
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _report  # noqa: E402
import strategies  # noqa: E402

BENCHMARK = "speed"
LABELS = ["negative", "neutral", "positive"]
FLOOR, FULL = "frozen floor", "full fine-tuning"
PEFT_OF = strategies.PEFT  # ours -> PEFT's same method
METHODS = [FLOOR, FULL, *[m for ours in strategies.OURS for m in (ours, PEFT_OF.get(ours)) if m]]

SENTENCES = [
    "Operating profit rose to EUR 13.1 mn from EUR 8.7 mn in the corresponding period in 2007.",
    "The company expects its net sales for the whole of 2009 to remain below the 2008 level.",
    "I still have not received my new card, I ordered it over a week ago and nobody answers.",
    "Why was I charged an extra fee when I withdrew cash from the ATM abroad last Tuesday?",
    "Finnish airline Finnair said it would cut about 450 jobs as demand for travel weakened.",
    "Shares in the bank fell sharply after it reported a larger than expected quarterly loss.",
    "Can you tell me how long a transfer from my savings account to another bank usually takes?",
    "The contract is valued at some EUR 20 million and deliveries will start later this year.",
    "My top-up was declined twice even though the money left my account, please refund it.",
    "Sales in the United States grew by 12 percent while Europe remained flat compared to last year.",
    "The board proposes a dividend of 0.50 euro per share, up from 0.40 euro a year earlier.",
    "How do I change the PIN of my physical card and is it possible to do it in the app?",
]


# ---------------------------------------------------------------------------------------------------------------
# Models: every method is a module whose forward(batch) returns logits, with the same head class.
# ---------------------------------------------------------------------------------------------------------------
class Classifier(nn.Module):
    """A backbone (plain HF, or wrapped by PEFT) + our `ClassificationHead` (mean pooling + Linear)."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.head(self.backbone, batch)


def _head():
    from lightning_adapters.heads import ClassificationHead

    return ClassificationHead(pooling="mean", dropout=0.1)


def build(method: str) -> nn.Module:
    """The model of one method, trainable parameters set, in train() mode, on CPU."""
    from transformers import AutoModel

    from lightning_adapters import backbone as hf
    from lightning_adapters.strategies import FullFineTuning

    torch.manual_seed(0)
    if method in strategies.OURS:
        from lightning_adapters import AdapterModule

        model = AdapterModule(backbone="minilm", strategy=strategies.ours(method), head=_head(), label_names=LABELS)
        return model.train()
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
    backbone = hf.load_model("minilm", AutoModel)  # frozen
    if method == FULL:
        FullFineTuning().apply(backbone)
    elif method == FLOOR:
        backbone.enable_input_require_grads()  # forward hook: embedding output .requires_grad_()
    else:
        backbone = strategies.peft_backbone(method, backbone)
    head = _head()
    head.build(backbone.config, LABELS)
    return Classifier(backbone, head).train()


def make_batch(batch_size: int, seq_len: int, device: torch.device) -> dict[str, torch.Tensor]:
    """``batch_size`` real texts (random runs of varied sentences), tokenized to exactly ``seq_len`` tokens."""
    from lightning_adapters import backbone as hf

    rng = random.Random(0)
    texts = [" ".join(rng.sample(SENTENCES, k=rng.randint(2, 5))) for _ in range(batch_size)]
    tokenizer = hf.load_tokenizer("minilm")
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=seq_len, return_tensors="pt")
    batch = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
    batch["labels"] = torch.tensor([rng.randrange(len(LABELS)) for _ in range(batch_size)])
    return {k: v.to(device) for k, v in batch.items()}


@dataclass
class Runner:
    """One method ready to train: model, optimizer and a closure that runs one train step."""

    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    step: Callable[[], None]


def make_runner(method: str, batch: dict[str, torch.Tensor], device: torch.device, lr: float) -> Runner:
    model = build(method).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)

    def step() -> None:
        logits = model(batch)
        loss = model.head.loss(logits, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return Runner(method, model, optimizer, step)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def param_counts(model: nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------------------------
# Timing (all methods in one process, interleaved) and memory (one subprocess per method)
# ---------------------------------------------------------------------------------------------------------------
def time_methods(runners: list[Runner], device: torch.device, warmup: int, rounds: int, steps: int,
                 max_minutes: float | None = None) -> dict[str, list[float]]:
    """Step times per method; with ``max_minutes``, no new round starts after that much wall time (every method
    still gets the same number of rounds). CPU: the process's CPU time per step — on a shared machine the wall time
    also counts the time the scheduler gives to other jobs (±20 % between neighbouring steps at load 12 on 2 cores),
    CPU time does not; CUDA: wall time between synchronisations."""
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    start_all = time.perf_counter()
    for runner in runners:
        for _ in range(warmup):
            runner.step()
    sync(device)
    times: dict[str, list[float]] = {r.name: [] for r in runners}
    for round_index in range(rounds):
        shift = round_index % len(runners)
        for runner in runners[shift:] + runners[:shift]:  # rotate so no method always runs first/last
            for _ in range(steps):
                sync(device)
                start = clock()
                runner.step()
                sync(device)
                times[runner.name].append(clock() - start)
        print(f"  round {round_index + 1}/{rounds}: " + ", ".join(
            f"{name} {1000 * statistics.median(ts[-steps:]):.0f}" for name, ts in times.items()) + " ms", flush=True)
        if max_minutes is not None and time.perf_counter() - start_all > 60 * max_minutes:
            print(f"  time limit of {max_minutes} min reached after {round_index + 1} rounds", flush=True)
            break
    return times


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def measure_memory(method: str, batch: dict[str, torch.Tensor], device: torch.device, lr: float,
                   steps: int) -> float:
    """MiB: CUDA peak allocated (weights included), or CPU peak RSS growth over the loaded model."""
    runner = make_runner(method, batch, device, lr)
    with torch.no_grad():
        runner.model(batch)  # lazy runtime initialisation, not training memory
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        for _ in range(steps):
            runner.step()
        sync(device)
        return torch.cuda.max_memory_allocated() / 2**20
    baseline = _rss_kib("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS high-water mark (VmHWM)
        peak_field = "VmHWM"
    except OSError:
        peak_field = None
    for _ in range(steps):
        runner.step()
    peak = _rss_kib(peak_field) if peak_field else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (peak - baseline) / 1024


def _memory_child(conn, method: str, batch: dict[str, torch.Tensor], lr: float, steps: int) -> None:
    try:
        conn.send(("ok", measure_memory(method, batch, torch.device("cpu"), lr, steps)))
    except BaseException as err:  # report it to the parent instead of dying silently
        conn.send(("error", f"{type(err).__name__}: {err}"))


def memory_in_fork(method: str, batch: dict[str, torch.Tensor], lr: float, steps: int) -> float:
    """CPU: measure in a child forked from this process before any model exists (imports and the tokenized batch
    already done, so a child costs seconds, not an interpreter start); its RSS is its own, measured from its own
    baseline after loading, so nothing of an earlier method's memory is counted."""
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_memory_child, args=(sender, method, batch, lr, steps))
    child.start()
    status, value = receiver.recv()
    child.join()
    if status != "ok":
        raise RuntimeError(f"memory measurement of {method} failed: {value}")
    return float(value)


def memory_in_subprocess(method: str, args: argparse.Namespace) -> float:
    """CUDA: a fresh interpreter per method (CUDA cannot be forked once initialised)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-worker", method, "--threads", str(args.threads),
           "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len), "--memory-steps",
           str(args.memory_steps)]
    if args.cpu:
        cmd.append("--cpu")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return float(json.loads(out.stdout.strip().splitlines()[-1])["memory_mib"])


# ---------------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------------
def report(args: argparse.Namespace, device: torch.device, times: dict[str, list[float]],
           counts: dict[str, tuple[int, int]], memory: dict[str, float], out: Path) -> None:
    med = {m: statistics.median(ts) for m, ts in times.items()}
    cuda = device.type == "cuda"
    mem_metric = "peak_memory_allocated" if cuda else "peak_rss_growth"
    mem_desc = ("torch.cuda.max_memory_allocated during training, weights included, one fresh process per method"
                if cuda else "peak RSS during training minus RSS of the loaded model (activations + gradients + "
                "AdamW state), one process per method, forked before any model was built")
    task = f"sequence classification, {len(LABELS)} labels, MiniLM, batch {args.batch_size}x{args.seq_len} tokens"
    setup = (f"{_report.hardware()}; {_report.versions()}; train step = forward+loss+backward+AdamW+zero_grad, "
             f"train() mode; step time = {'wall time' if cuda else 'process CPU time'}; {args.warmup} warm-up steps, "
             f"then {len(times[FLOOR]) // args.steps} round-robin rounds x "
             f"{args.steps} steps,"
             f" median; memory: {mem_desc}; configurations: {strategies.describe()}; bottleneck reduction factor 16; "
             "each PEFT method with the same configuration as ours"
             f"{'; QUICK smoke run' if args.quick else ''}")
    records, rows = [], []
    for m in times:
        figures = method_figures(m, times, med, counts[m], memory[m], mem_metric)
        records += [_report.record(BENCHMARK, task, m, k, v if v is None or isinstance(v, int) else round(v, 4), u,
                                   setup) for k, (v, u) in figures.items()]
        q = statistics.quantiles(times[m], n=4) if len(times[m]) > 1 else [times[m][0]] * 3
        vs_peft = figures.get("step_time_ratio_vs_peft_same_method", (None,))[0]
        rows.append([m, f"{counts[m][0]:,}", f"{figures['trainable_percent'][0]:.3f}", f"{1000 * med[m]:.1f}",
                     f"{1000 * q[0]:.1f}–{1000 * q[2]:.1f}", f"{1000 * min(times[m]):.1f}",
                     f"{med[m] / med[FLOOR]:.3f}", "–" if vs_peft is None else f"{vs_peft:.3f}",
                     "–" if memory[m] is None else f"{memory[m]:.0f}"])
    _report.write_json(out, records)
    headers = ["method", "trainable params", "trainable %", "median step ms", "IQR ms", "min ms", "× frozen floor",
               "× PEFT same method", f"{'peak alloc' if cuda else 'peak RSS growth'} MiB"]
    md = [f"# Train-step speed and memory ({task})", "", _report.markdown_table(headers, rows), "",
          "Acceptance (same run):", *acceptance(med), "", f"Setup: {setup}.", "",
          f"Command: `python recipes/benchmark/speed.py {shlex.join(sys.argv[1:])}`", ""]
    (out / "results.md").write_text("\n".join(md))
    plot(times, med, memory, mem_metric, out / "speed.png", task)
    print("\n".join(md))


def method_figures(m: str, times: dict[str, list[float]], med: dict[str, float], counts: tuple[int, int],
                   memory: float | None, mem_metric: str) -> dict[str, tuple[Any, str]]:
    """{metric: (value, unit)} of one method; ratios only against methods measured in the same run."""
    trainable, total = counts
    figures = {"step_time": (1000 * med[m], "ms"), "step_time_min": (1000 * min(times[m]), "ms"),
               "step_time_ratio_vs_frozen_floor": (med[m] / med[FLOOR], "x"),
               "trainable_params": (trainable, "count"), "trainable_percent": (100 * trainable / total, "%"),
               mem_metric: (None if memory is None else round(memory, 1), "MiB")}
    if PEFT_OF.get(m) in med:
        figures["step_time_ratio_vs_peft_same_method"] = (med[m] / med[PEFT_OF[m]], "x")
    return figures


def acceptance(med: dict[str, float]) -> list[str]:
    """Each of our strategies ≤ 1.05 × frozen floor (prompt/prefix tuning, which lengthen attention: ≤ PEFT's same
    method); our LoRA ≤ 0.95 × PEFT LoRA; Pfeiffer ≤ PEFT LoRA (the "Core" issue's bar)."""
    lines = []
    for m in (m for m in strategies.OURS if m in med):
        if m in (strategies.PROMPT, strategies.PREFIX):
            if PEFT_OF[m] in med:
                ratio = med[m] / med[PEFT_OF[m]]
                lines.append(_report.check_line(f"{m} step ≤ {PEFT_OF[m]} step", ratio <= 1.0, f"{ratio:.3f}×"))
            continue
        ratio = med[m] / med[FLOOR]
        lines.append(_report.check_line(f"{m} step ≤ 1.05 × frozen floor", ratio <= 1.05, f"{ratio:.3f}×"))
    if strategies.LORA in med and strategies.PEFT_LORA in med:
        ratio = med[strategies.LORA] / med[strategies.PEFT_LORA]
        lines.append(_report.check_line("LoRA (ours) step ≤ 0.95 × PEFT LoRA step (same config)", ratio <= 0.95,
                                        f"{ratio:.3f}×"))
    pfeiffer = "bottleneck pfeiffer (ours)"
    if pfeiffer in med and strategies.PEFT_LORA in med:
        ratio = med[pfeiffer] / med[strategies.PEFT_LORA]
        lines.append(_report.check_line("Pfeiffer step ≤ PEFT LoRA step", ratio <= 1.0, f"{ratio:.3f}×"))
    return lines


def plot(times, med, memory, mem_metric, path: Path, task: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(times)
    colors = ["#1f77b4" if "ours" in n else "#7f7f7f" if n in (FLOOR, FULL) else "#ff7f0e" for n in names]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(16, 5.2))
    ratios = [med[n] / med[FLOOR] for n in names]
    ax1.bar(range(len(names)), ratios, color=colors)
    ax1.axhline(1.0, color="black", lw=0.8)
    ax1.axhline(1.05, color="red", lw=0.8, ls="--", label="1.05 × floor")
    ax1.set_ylabel("median step time / frozen floor")
    ax1.set_ylim(0, max(ratios) * 1.15)
    ax1.legend(loc="upper right")
    mems = [memory[n] or 0.0 for n in names]
    ax2.bar(range(len(names)), mems, color=colors)
    ax2.set_ylabel(("peak allocated" if mem_metric == "peak_memory_allocated" else "peak RSS growth in training")
                   + " (MiB)")
    for ax, vals in ((ax1, ratios), (ax2, mems)):
        ax.set_xticks(range(len(names)), [n.replace(" (ours)", "\n(ours)") for n in names], rotation=35, ha="right",
                      fontsize=8)
        for i, v in enumerate(vals):
            ax.text(i, v, f"{v:.2f}" if ax is ax1 else f"{v:.0f}", ha="center", va="bottom", fontsize=8)
    fig.suptitle(task, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=None, help="output folder (default: results/speed beside this file)")
    p.add_argument("--quick", action="store_true", help="smoke test: batch 4x16, 1 round, no memory measurement")
    p.add_argument("--threads", type=int, default=1,
                   help="torch.set_num_threads (default 1: robust when other jobs share the CPU; the ratios are "
                        "what matters)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--warmup", type=int, default=3, help="warm-up steps per method")
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--steps", type=int, default=3, help="consecutive steps per method per round")
    p.add_argument("--memory-steps", type=int, default=3)
    p.add_argument("--max-minutes", type=float, default=None,
                   help="start no new timing round after this many minutes (the rounds done are reported)")
    p.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS, metavar="METHOD",
                   help=f"subset of {METHODS} (the floor is always included)")
    p.add_argument("--cpu", action="store_true", help="ignore CUDA even if available")
    p.add_argument("--memory-worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.batch_size, args.seq_len, args.warmup, args.rounds, args.steps, args.memory_steps = 4, 16, 1, 1, 1, 1
    if FLOOR not in args.methods:
        args.methods = [FLOOR, *args.methods]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    _report.setup_runtime(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    lr = 1e-4  # irrelevant for timing; small enough that no method diverges during the measured steps
    batch = make_batch(args.batch_size, args.seq_len, device)
    if args.memory_worker:
        print(json.dumps({"memory_mib": measure_memory(args.memory_worker, batch, device, lr, args.memory_steps)}))
        return
    out = args.out or _report.default_out(BENCHMARK)
    out.mkdir(parents=True, exist_ok=True)
    print(f"device {device}, threads {torch.get_num_threads()}, batch {args.batch_size}x{args.seq_len}", flush=True)
    memory: dict[str, float | None] = {m: None for m in args.methods}  # not measured in --quick
    if not args.quick:  # fresh process per method, before the timing models take memory
        for method in args.methods:
            memory[method] = (memory_in_subprocess(method, args) if device.type == "cuda"
                              else memory_in_fork(method, batch, lr, args.memory_steps))
            print(f"  memory {method}: {memory[method]:.0f} MiB", flush=True)
    runners = [make_runner(m, batch, device, lr) for m in args.methods]
    counts = {r.name: param_counts(r.model) for r in runners}
    times = time_methods(runners, device, args.warmup, args.rounds, args.steps, args.max_minutes)
    report(args, device, times, counts, memory, out)


if __name__ == "__main__":
    main()
