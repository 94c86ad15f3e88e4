"""Train-step time and peak memory of every strategy, ours, PEFT's and AdapterHub's, vs matched frozen floors.

One command, everything measured in the same run so that the ratios are meaningful on any machine:

    python recipes/benchmark/speed.py                 # -> recipes/benchmark/results/speed/{results.md,json,png}
    python recipes/benchmark/speed.py --quick         # smoke test: tiny batch, 1 step per method, no memory

Setup: MiniLM (the ``minilm`` alias), a fixed batch of real sentences tokenized to exactly ``--seq-len`` tokens,
3 labels, the same head for every method (mask-aware mean pooling + dropout 0.1 + Linear, i.e. our
`ClassificationHead`). A train step is forward + cross-entropy + backward + AdamW step + zero_grad, model in train()
mode.

Methods:
- ``frozen floor (from embeddings)``: frozen backbone without adapters, the embedding output requires grad so that
  the backward pass runs through every layer and the embeddings' LayerNorm;
- ``frozen floor to M``, one per gradient start found: the same frozen backbone, with a trainable scalar (1.0)
  multiplying the output of module ``M``, so that the backward pass runs from the loss down to ``M``'s output and no
  further. Each method is measured against the floor matched to ITS gradient path: ``M`` is found by running one
  forward of the method's model with forward hooks on every module: the first module (in execution order, head
  excluded) whose output requires grad and that maps onto a module of the plain backbone (the longest run of its
  path's components that is a module path of the plain model, e.g. ``backbone.encoder.layer.0.attention.self.query.
  lora_A`` -> ``encoder.layer.0.attention.self.query``). A method whose gradient starts at the input embeddings
  (full fine-tuning) gets the floor from the embeddings. This is the cheapest any method whose gradient must reach
  ``M`` can be: a ratio below 1 is noise, not a method skipping work;
- ``full fine-tuning``: every backbone weight trainable;
- our strategies (bottleneck houlsby/pfeiffer/parallel, LoRA, IA3, prompt and prefix tuning) as `AdapterModule`, and
  PEFT's LoRA, IA3, prompt and prefix tuning via `peft.get_peft_model` on `transformers.AutoModel`, each pair with
  the same configuration (`strategies.py`);
- AdapterHub's houlsby/pfeiffer/parallel bottleneck adapters (``adapters``, which needs transformers 4.57, not ours):
  run by ``adapterhub/worker.py`` in a separate Python (``--adapterhub-python``, built by ``adapterhub/make_venv.sh``)
  with the same batch, head, protocol and its own floors measured in that process; only ratios to those floors are
  compared. Skipped, with the reason printed, when that Python is missing or fails.

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
import tempfile
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
FLOOR, FULL = "frozen floor (from embeddings)", "full fine-tuning"
FLOOR_TO = "frozen floor to "  # + a module path of the plain backbone: a floor matched to a gradient start
PEFT_OF = strategies.PEFT  # ours -> PEFT's same method
METHODS = [FLOOR, FULL, *[m for ours in strategies.OURS for m in (ours, PEFT_OF.get(ours)) if m]]
HERE = Path(__file__).resolve().parent
ADAPTERHUB_WORKER = HERE / "adapterhub" / "worker.py"
ADAPTERHUB_PYTHON = Path("/tmp/venv-adapterhub/bin/python")  # what adapterhub/make_venv.sh builds by default
ADAPTERHUB_TAG = " [AdapterHub process]"  # suffix of the floors measured in the AdapterHub process
# AdapterHub's method -> our same variant (the worker's methods; its floors are named like ours + ADAPTERHUB_TAG)
ADAPTERHUB_OURS = {f"AdapterHub {v}": ours for ours, v in strategies.BOTTLENECK.items()}

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
    """A backbone (plain HF, or wrapped by PEFT / AdapterHub) + a head (mean pooling + Linear)."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.head(self.backbone, batch)


class Gate(nn.Module):
    """A trainable scalar, 1.0, multiplying the output of one frozen module (a forward hook): the backward pass of the
    frozen model then runs from the loss down to that module's output and stops there."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def hook(self, module: nn.Module, args: tuple, output: Any) -> Any:
        if isinstance(output, torch.Tensor):
            return output * self.scale
        if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
            return (output[0] * self.scale, *output[1:])
        raise TypeError(f"cannot gate the output of {type(module).__name__} ({type(output).__name__})")


def is_floor(method: str) -> bool:
    return method == FLOOR or method.startswith(FLOOR_TO)


def make_floor(backbone: nn.Module, method: str) -> Gate | None:
    """Turn the frozen plain ``backbone`` into the floor ``method``; returns the gate to register on the model."""
    if method == FLOOR:
        backbone.enable_input_require_grads()  # forward hook: embedding output .requires_grad_()
        return None
    gate = Gate()
    backbone.get_submodule(method.removeprefix(FLOOR_TO)).register_forward_hook(gate.hook)
    return gate


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
    if method not in METHODS and not is_floor(method):
        raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
    backbone = hf.load_model("minilm", AutoModel)  # frozen
    gate = None
    if method == FULL:
        FullFineTuning().apply(backbone)
    elif is_floor(method):
        gate = make_floor(backbone, method)
    else:
        backbone = strategies.peft_backbone(method, backbone)
    head = _head()
    head.build(backbone.config, LABELS)
    model = Classifier(backbone, head)
    if gate is not None:
        model.gate = gate
    return model.train()


def load_plain() -> nn.Module:
    from transformers import AutoModel

    from lightning_adapters import backbone as hf

    return hf.load_model("minilm", AutoModel)


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


# ---------------------------------------------------------------------------------------------------------------
# Matched floors: where each method's gradient path starts
# ---------------------------------------------------------------------------------------------------------------
def _requires_grad(output: Any) -> bool:
    if isinstance(output, torch.Tensor):
        return output.requires_grad
    if isinstance(output, dict):
        output = list(output.values())
    return isinstance(output, (tuple, list)) and any(_requires_grad(o) for o in output)


def plain_path(name: str, plain_names: set[str]) -> str | None:
    """The module of the plain backbone that module ``name`` of an adapted or wrapped model stands at: the longest
    run of ``name``'s components that is a module path of the plain model, so wrapper prefixes (``backbone.``, PEFT's
    ``base_model.model.``) and adapter suffixes (``.lora_A.default``, ``.down``, ``.output_adapters...``) fall away."""
    parts, best = name.split("."), None
    for i in range(len(parts)):
        for j in range(len(parts), i, -1):
            candidate = ".".join(parts[i:j])
            if candidate in plain_names:
                if best is None or j - i > best.count(".") + 1:
                    best = candidate
                break
    return best


def gradient_start(model: nn.Module, batch: dict[str, torch.Tensor], plain_names: set[str]) -> str | None:
    """The plain-backbone module where ``model``'s backward pass ends: one forward with hooks on every module (the
    head excluded); the first, in execution order, whose output requires grad and that maps onto a plain module."""
    order: list[str] = []

    def hook(name: str) -> Callable:
        return lambda module, args, output: order.append(name) if _requires_grad(output) else None

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n and n.split(".")[0] != "head"]
    try:
        model(batch)
    finally:
        for handle in handles:
            handle.remove()
    return next((target for target in (plain_path(n, plain_names) for n in order) if target), None)


def find_floors(methods: list[str], batch: dict[str, torch.Tensor], builder: Callable[[str], nn.Module],
                plain: nn.Module) -> dict[str, str]:
    """{method: its matched floor}: ``FLOOR_TO + module``, or `FLOOR` where the gradient starts at the input
    embeddings' output (or no start was found)."""
    names = {n: m for n, m in plain.named_modules() if n}
    embeddings = next(n for n, m in names.items() if m is plain.get_input_embeddings())
    floors = {}
    for method in (m for m in methods if not is_floor(m)):
        target = gradient_start(builder(method), batch, set(names))
        if target is None:
            print(f"  {method}: no gradient start found in the plain model; using {FLOOR}", flush=True)
        floors[method] = FLOOR if target in (None, embeddings) else FLOOR_TO + target
        print(f"  {method}: gradient starts at {target} -> {floors[method]}", flush=True)
    return floors


# ---------------------------------------------------------------------------------------------------------------
# Timing (all methods in one process, interleaved) and memory (one process per method)
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Runner:
    """One method ready to train: model, optimizer and a closure that runs one train step."""

    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    step: Callable[[], None]


def make_runner(method: str, batch: dict[str, torch.Tensor], device: torch.device, lr: float,
                builder: Callable[[str], nn.Module] = build) -> Runner:
    model = builder(method).to(device)
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
        print(f"  round {round_index + 1}/{rounds} ({time.perf_counter() - start_all:.0f} s): " + ", ".join(
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


def measure_memory(method: str, batch: dict[str, torch.Tensor], device: torch.device, lr: float, steps: int,
                   builder: Callable[[str], nn.Module] = build) -> float:
    """MiB: CUDA peak allocated (weights included), or CPU peak RSS growth over the loaded model."""
    runner = make_runner(method, batch, device, lr, builder)
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


def in_fork(function: Callable[..., Any], *args: Any) -> Any:
    """``function(*args)`` in a child forked from this process (imports and the tokenized batch already done, so a
    child costs seconds, not an interpreter start); its models and memory die with it. CPU only."""
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)

    def child() -> None:
        try:
            sender.send(("ok", function(*args)))
        except BaseException as err:  # report it to the parent instead of dying silently
            sender.send(("error", f"{type(err).__name__}: {err}"))

    process = context.Process(target=child)
    process.start()
    status, value = receiver.recv()
    process.join()
    if status != "ok":
        raise RuntimeError(f"{getattr(function, '__name__', function)}{args[:1]} failed in a child process: {value}")
    return value


def memory_in_fork(method: str, batch: dict[str, torch.Tensor], lr: float, steps: int,
                   builder: Callable[[str], nn.Module] = build) -> float:
    """CPU: measure in a child forked before any model exists; its RSS is its own, measured from its own baseline
    after loading, so nothing of an earlier method's memory is counted."""
    return float(in_fork(measure_memory, method, batch, torch.device("cpu"), lr, steps, builder))


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
# AdapterHub peer: a separate Python (adapters needs transformers 4.57), same batch, head and protocol
# ---------------------------------------------------------------------------------------------------------------
def adapterhub_peer(args: argparse.Namespace, batch: dict[str, torch.Tensor]) -> tuple[dict | None, str]:
    """(the worker's results, a note): None and the reason when the peer is skipped or fails; never raises."""
    if args.quick:
        return None, "skipped in --quick"
    if args.no_adapterhub:
        return None, "skipped (--no-adapterhub)"
    python = args.adapterhub_python
    if not python.exists():
        return None, (f"skipped: no AdapterHub Python at {python} (build one with `bash recipes/benchmark/adapterhub/"
                      "make_venv.sh`, or pass --adapterhub-python)")
    check = subprocess.run([str(python), "-c", "import adapters, torch, transformers; print(adapters.__version__)"],
                           capture_output=True, text=True)
    if check.returncode:
        last = (check.stderr.strip().splitlines() or ["?"])[-1]
        return None, f"skipped: {python} cannot import adapters/torch/transformers ({last})"
    from lightning_adapters import backbone as hf

    with tempfile.TemporaryDirectory() as tmp:
        batch_path, out_path = Path(tmp) / "batch.pt", Path(tmp) / "adapterhub.json"
        torch.save({k: v.cpu() for k, v in batch.items()}, batch_path)
        cmd = [str(python), str(ADAPTERHUB_WORKER), "--model-dir", hf.resolve("minilm").path, "--batch",
               str(batch_path), "--out", str(out_path), "--threads", str(args.threads), "--warmup", str(args.warmup),
               "--rounds", str(args.rounds), "--steps", str(args.steps), "--memory-steps", str(args.memory_steps)]
        if args.max_minutes is not None:
            cmd += ["--max-minutes", str(args.max_minutes)]
        if args.cpu:
            cmd.append("--cpu")
        print(f"AdapterHub peer: {shlex.join(cmd)}", flush=True)
        proc = subprocess.run(cmd, text=True, env=_offline_env())
        if proc.returncode or not out_path.exists():
            return None, f"skipped: the AdapterHub worker failed (exit {proc.returncode}; its output is above)"
        peer = json.loads(out_path.read_text())
    return peer, f"measured in a separate process: {peer['versions']}"


def _offline_env() -> dict[str, str]:
    import os

    return dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


# ---------------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Measured:
    """What one process measured: step times, parameter counts, memory and each method's matched floor."""

    times: dict[str, list[float]]
    counts: dict[str, tuple[int, int]]
    memory: dict[str, float | None]
    floor_of: dict[str, str]

    @property
    def median(self) -> dict[str, float]:
        return {m: statistics.median(ts) for m, ts in self.times.items()}

    def vs_floor(self, method: str) -> float | None:
        floor = self.floor_of.get(method)
        return None if floor is None else self.median[method] / self.median[floor]


def _short(floor: str) -> str:
    """A floor's gradient start, for the tables (the AdapterHub process's floors lose their tag)."""
    floor = floor.removesuffix(ADAPTERHUB_TAG)
    return "embeddings (input)" if floor == FLOOR else f"`{floor.removeprefix(FLOOR_TO)}`"


def _rows(measured: Measured, floor_name: Callable[[str], str]) -> list[list[str]]:
    med, rows = measured.median, []
    for m, ts in measured.times.items():
        q = statistics.quantiles(ts, n=4) if len(ts) > 1 else [ts[0]] * 3
        trainable, total = measured.counts[m]
        vs_floor, vs_peft = measured.vs_floor(m), PEFT_OF.get(m)
        rows.append([m, f"{trainable:,}", f"{100 * trainable / total:.3f}", f"{1000 * med[m]:.1f}",
                     f"{1000 * q[0]:.1f}–{1000 * q[2]:.1f}", f"{1000 * min(ts):.1f}", str(len(ts)),
                     "–" if is_floor(m.removesuffix(ADAPTERHUB_TAG)) else _short(measured.floor_of[m]),
                     "–" if vs_floor is None else f"**{vs_floor:.3f}**",
                     f"{med[m] / med[floor_name(FLOOR)]:.3f}",
                     f"{med[m] / med[vs_peft]:.3f}" if vs_peft in med else "–",
                     "–" if measured.memory.get(m) is None else f"{measured.memory[m]:.0f}"])
    return rows


def _records(measured: Measured, floor_name: Callable[[str], str], task: str, setup: str,
             mem_metric: str) -> list[dict[str, Any]]:
    med, records = measured.median, []
    for m, ts in measured.times.items():
        trainable, total = measured.counts[m]
        figures = {"step_time": (1000 * med[m], "ms"), "step_time_min": (1000 * min(ts), "ms"),
                   "timed_steps": (len(ts), "count"),
                   "step_time_ratio_vs_floor_from_embeddings": (med[m] / med[floor_name(FLOOR)], "x"),
                   "trainable_params": (trainable, "count"), "trainable_percent": (100 * trainable / total, "%"),
                   mem_metric: (None if measured.memory.get(m) is None else round(measured.memory[m], 1), "MiB")}
        if m in measured.floor_of:
            figures["matched_floor"] = (measured.floor_of[m], "method")
            figures["step_time_ratio_vs_matched_floor"] = (measured.vs_floor(m), "x")
        if PEFT_OF.get(m) in med:
            figures["step_time_ratio_vs_peft_same_method"] = (med[m] / med[PEFT_OF[m]], "x")
        records += [_report.record(BENCHMARK, task, m, k, round(v, 4) if isinstance(v, float) else v, u, setup)
                    for k, (v, u) in figures.items()]
    return records


def report(args: argparse.Namespace, device: torch.device, ours: Measured, peer: dict | None, peer_note: str,
           out: Path, wall_minutes: float) -> None:
    cuda = device.type == "cuda"
    mem_metric = "peak_memory_allocated" if cuda else "peak_rss_growth"
    mem_desc = ("torch.cuda.max_memory_allocated during training, weights included, one fresh process per method"
                if cuda else "peak RSS during training minus RSS of the loaded model (activations + gradients + "
                "AdamW state), one process per method, forked before any model was built")
    task = f"sequence classification, {len(LABELS)} labels, MiniLM, batch {args.batch_size}x{args.seq_len} tokens"
    protocol = (f"train step = forward+loss+backward+AdamW+zero_grad, train() mode; step time = "
                f"{'wall time' if cuda else 'process CPU time'}; {args.warmup} warm-up steps, then "
                f"{len(ours.times[FLOOR]) // args.steps} round-robin rounds x {args.steps} steps, median; matched "
                "floors: frozen backbone with a trainable scalar on the output of the module where the method's "
                f"gradient starts (found by forward hooks); memory: {mem_desc}")
    setup = (f"{_report.hardware()}; {_report.versions()}; {protocol}; configurations: {strategies.describe()}; "
             "bottleneck reduction factor 16; each PEFT method with the same configuration as ours"
             f"{'; QUICK smoke run' if args.quick else ''}")
    records = _records(ours, lambda f: f, task, setup, mem_metric)
    headers = ["method", "trainable params", "trainable %", "median step ms", "IQR ms", "min ms", "steps",
               "matched floor (gradient starts at)", "× matched floor", "× floor from embeddings",
               "× PEFT same method", f"{'peak alloc' if cuda else 'peak RSS growth'} MiB"]
    md = [f"# Train-step speed and memory ({task})", "", _report.markdown_table(headers, _rows(ours, lambda f: f)), ""]
    peer_measured = None
    if peer is not None:
        peer_measured = Measured(peer["times"], {m: tuple(c) for m, c in peer["counts"].items()}, peer["memory"],
                                 peer["floor_of"])
        peer_setup = (f"{_report.hardware()}; {peer['versions']}; {protocol}; configurations: {peer['configs']}; "
                      "same batch and head as ours, floors measured in the same (AdapterHub) process")
        records += _records(peer_measured, lambda f: f + ADAPTERHUB_TAG, task, peer_setup, mem_metric)
        md += [f"AdapterHub peer ({peer['versions']}; a separate process, so only the ratios to the floors measured "
               "in that process compare with ours):", "",
               _report.markdown_table(headers, _rows(peer_measured, lambda f: f + ADAPTERHUB_TAG)), "",
               f"AdapterHub configurations: {peer['configs']}.", ""]
    else:
        md += [f"AdapterHub peer: {peer_note}.", ""]
    _report.write_json(out, records)
    md += ["Acceptance (same run):", *acceptance(ours), "", "Compared, not bars:", *comparisons(ours, peer_measured),
           "", f"Setup: {setup}.", "",
           f"Command: `{shlex.join(['python', 'recipes/benchmark/speed.py', *sys.argv[1:]])}` — "
           f"{wall_minutes:.1f} min wall time", ""]
    (out / "results.md").write_text("\n".join(md))
    plot(ours, peer_measured, mem_metric, out / "speed.png", task)
    print("\n".join(md))


def acceptance(ours: Measured) -> list[str]:
    """Each of our bottleneck/LoRA/IA3 strategies ≤ 1.05 × its matched floor (prompt/prefix tuning, which lengthen
    attention: ≤ PEFT's same method); our LoRA ≤ 0.95 × PEFT LoRA; Pfeiffer ≤ PEFT LoRA (the "Core" issue's bar)."""
    med, lines = ours.median, []
    for m in (m for m in strategies.OURS if m in med):
        if m in (strategies.PROMPT, strategies.PREFIX):
            if PEFT_OF[m] in med:
                ratio = med[m] / med[PEFT_OF[m]]
                lines.append(_report.check_line(f"{m} step ≤ {PEFT_OF[m]} step", ratio <= 1.0, f"{ratio:.3f}×"))
            continue
        ratio = ours.vs_floor(m)
        lines.append(_report.check_line(f"{m} step ≤ 1.05 × its matched floor ({_short(ours.floor_of[m])})",
                                        ratio <= 1.05, f"{ratio:.3f}×"))
    if strategies.LORA in med and strategies.PEFT_LORA in med:
        ratio = med[strategies.LORA] / med[strategies.PEFT_LORA]
        lines.append(_report.check_line("LoRA (ours) step ≤ 0.95 × PEFT LoRA step (same config)", ratio <= 0.95,
                                        f"{ratio:.3f}×"))
    pfeiffer = "bottleneck pfeiffer (ours)"
    if pfeiffer in med and strategies.PEFT_LORA in med:
        ratio = med[pfeiffer] / med[strategies.PEFT_LORA]
        lines.append(_report.check_line("Pfeiffer step ≤ PEFT LoRA step", ratio <= 1.0, f"{ratio:.3f}×"))
    return lines


def comparisons(ours: Measured, peer: Measured | None) -> list[str]:
    """Each PEFT method's and AdapterHub variant's ratio to its own matched floor beside ours (no bar)."""
    lines = []
    for m, twin in PEFT_OF.items():
        if m in ours.times and twin in ours.times:
            ratio = ours.median[m] / ours.median[twin]
            lines.append(f"- {m}: {ours.vs_floor(m):.3f}× its matched floor; {twin}: {ours.vs_floor(twin):.3f}× its "
                         f"matched floor ({_short(ours.floor_of[twin])}); ours / PEFT {ratio:.3f}×")
    for theirs, m in ADAPTERHUB_OURS.items():
        if peer is not None and theirs in peer.times and m in ours.times:
            lines.append(f"- {m}: {ours.vs_floor(m):.3f}× its matched floor ({_short(ours.floor_of[m])}); {theirs}: "
                         f"{peer.vs_floor(theirs):.3f}× its matched floor "
                         f"({_short(peer.floor_of[theirs])}, AdapterHub process)")
    return lines


def plot(ours: Measured, peer: Measured | None, mem_metric: str, path: Path, task: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = [(m, ours.vs_floor(m), ours.memory.get(m), "#7f7f7f" if m == FULL else "#1f77b4" if "ours" in m
             else "#ff7f0e") for m in ours.times if not is_floor(m)]
    if peer is not None:
        bars += [(m, peer.vs_floor(m), peer.memory.get(m), "#2ca02c") for m in peer.times if m in peer.floor_of]
    names = [b[0] for b in bars]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(17, 5.4))
    ratios, mems = [b[1] for b in bars], [b[2] or 0.0 for b in bars]
    ax1.bar(range(len(bars)), ratios, color=[b[3] for b in bars])
    ax1.axhline(1.0, color="black", lw=0.8)
    ax1.axhline(1.05, color="red", lw=0.8, ls="--", label="1.05 × matched floor")
    ax1.set_ylabel("median step time / its matched floor")
    ax1.set_ylim(0, max(ratios) * 1.15)
    ax1.legend(loc="upper left")
    ax2.bar(range(len(bars)), mems, color=[b[3] for b in bars])
    ax2.set_ylabel(("peak allocated" if mem_metric == "peak_memory_allocated" else "peak RSS growth in training")
                   + " (MiB)")
    for ax, vals in ((ax1, ratios), (ax2, mems)):
        ax.set_xticks(range(len(names)), [n.replace(" (ours)", "\n(ours)") for n in names], rotation=35, ha="right",
                      fontsize=8)
        for i, v in enumerate(vals):
            ax.text(i, v, f"{v:.3f}" if ax is ax1 else f"{v:.0f}", ha="center", va="bottom", fontsize=7)
    fig.suptitle(f"{task}; green: AdapterHub (separate process, ratio to its own floor)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=None, help="output folder (default: results/speed beside this file)")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: batch 4x16, 1 round, no memory measurement, no AdapterHub peer")
    p.add_argument("--threads", type=int, default=1,
                   help="torch.set_num_threads (default 1: robust when other jobs share the CPU; the ratios are "
                        "what matters)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--warmup", type=int, default=2, help="warm-up steps per method")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--steps", type=int, default=4, help="consecutive steps per method per round")
    p.add_argument("--memory-steps", type=int, default=3)
    p.add_argument("--max-minutes", type=float, default=None,
                   help="start no new timing round after this many minutes (the rounds done are reported)")
    p.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS, metavar="METHOD",
                   help=f"subset of {METHODS} (the floor from the embeddings and each method's matched floor are "
                        "always included)")
    p.add_argument("--adapterhub-python", type=Path, default=ADAPTERHUB_PYTHON,
                   help="a Python with `adapters` (and its transformers 4.57) installed, for the AdapterHub peer "
                        f"(default {ADAPTERHUB_PYTHON}, what adapterhub/make_venv.sh builds); skipped if missing")
    p.add_argument("--no-adapterhub", action="store_true", help="skip the AdapterHub peer")
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
    started = time.perf_counter()
    _report.setup_runtime(args.threads)
    use_cuda = torch.cuda.is_available() and not args.cpu
    device = torch.device("cuda" if use_cuda else "cpu")
    lr = 1e-4  # irrelevant for timing; small enough that no method diverges during the measured steps
    if args.memory_worker:
        batch = make_batch(args.batch_size, args.seq_len, device)
        print(json.dumps({"memory_mib": measure_memory(args.memory_worker, batch, device, lr, args.memory_steps)}))
        return
    out = args.out or _report.default_out(BENCHMARK)
    out.mkdir(parents=True, exist_ok=True)
    cpu_batch = make_batch(args.batch_size, args.seq_len, torch.device("cpu"))
    print(f"device {device}, threads {torch.get_num_threads()}, batch {args.batch_size}x{args.seq_len}", flush=True)
    print("gradient starts (one forward per method, in a child process):", flush=True)
    floor_of = in_fork(lambda: find_floors(args.methods, cpu_batch, build, load_plain()))
    floors = [FLOOR, *dict.fromkeys(f for f in floor_of.values() if f != FLOOR)]
    methods = [*floors, *(m for m in args.methods if m != FLOOR)]
    batch = {k: v.to(device) for k, v in cpu_batch.items()}
    memory: dict[str, float | None] = {m: None for m in methods}  # not measured in --quick
    if not args.quick:  # fresh process per method, before the timing models take memory
        for method in methods:
            memory[method] = (memory_in_subprocess(method, args) if device.type == "cuda"
                              else memory_in_fork(method, batch, lr, args.memory_steps))
            print(f"  memory {method}: {memory[method]:.0f} MiB", flush=True)
    runners = [make_runner(m, batch, device, lr) for m in methods]
    counts = {r.name: param_counts(r.model) for r in runners}
    times = time_methods(runners, device, args.warmup, args.rounds, args.steps, args.max_minutes)
    del runners
    ours = Measured(times, counts, memory, floor_of)
    peer, peer_note = adapterhub_peer(args, cpu_batch)
    print(f"AdapterHub peer: {peer_note}", flush=True)
    report(args, device, ours, peer, peer_note, out, (time.perf_counter() - started) / 60)


if __name__ == "__main__":
    main()
