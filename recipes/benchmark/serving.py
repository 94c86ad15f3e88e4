"""Serving cost of many adapters on one frozen base (issue 12): memory and mixed-batch latency, as ratios.

    python recipes/benchmark/serving.py --threads 2 1  # -> recipes/benchmark/results/serving/{results.md,json,png}
    python recipes/benchmark/serving.py --quick        # smoke test: LoRA only, 3 timing rounds

``--threads`` defaults to 2; given several counts, each configuration is timed at each count in the same
interleaved rounds (the committed results time 2 and 1: on a shared 2-core machine, two threads wait on each other
whenever another process holds a core, which penalises every extra pass, adapters or not — the frozen base's own
"4 x 8 rows" row shows how much).

Setup: MiniLM (the ``minilm`` alias) on the CPU, K = 4 adapters of one strategy on one base (`AdapterModule` with
its own adapter ``default`` + 3 `add_adapter` ones), each with its own `ClassificationHead` (3, 77, 10 and 5
labels), adapter weights randomised (not the identity they start as). A batch is 32 rows of exactly 64 real tokens
(sentences of the bundled ``tasks/finance_sentiment/sample/test.csv``, each row followed by the next ones up to 64
tokens, so no row is padding). Strategies: LoRA (r=8, default targets) and the Pfeiffer bottleneck; prefix tuning is
attempted and reported as not measurable where the library refuses K prefix adapters on one base.

Time (one process, ``--threads`` torch threads, ``module.eval()`` + ``torch.inference_mode()``): every
configuration below is timed once per round, the order rotating from round to round (ABCD.., BCD..A, ...), after
``--warmup`` calls each; the figure is the median over ``--rounds`` rounds, and each ratio is taken to the
single-adapter batch measured in the same rounds:

- ``single``: the K = 4 module with one adapter fixed (`set_active_adapters("default")`), 32 rows: the reference;
- ``mixed 8/8/8/8``: the same 32 rows with key ``adapter_names`` assigned round-robin (today: one backbone pass
  per adapter present, each on its 8 rows); ``mixed 29/1/1/1``: a skewed mix;
- ``4 x 8 rows, one adapter``: the 32 rows as 4 plain batches of 8, adapter fixed — separates "smaller passes"
  from "adapter switching + routing" in the mixed batch; ``routed, one adapter``: the 32 rows with ``adapter_names``
  all ``default`` (routing bookkeeping on one full pass); ``1 row``: one row alone (the fixed cost of a pass);
- ``1-adapter model``: a module with only its own adapter (what inactive adapters cost a single-adapter batch);
- ``frozen base``: the plain ``transformers.AutoModel`` from the same folder, 32 rows (adapter overhead) and as
  4 x 8 rows (what smaller passes cost with no adapter code at all).

Before timing, each mixed batch's outputs are checked against the single-adapter outputs of the same rows.

Memory: each configuration in a fresh subprocess (large allocations forced onto mmap, as in ``memory.py``, so freed
activations leave the resident set). The process first imports everything and runs a tiny model of the same
architecture and strategy (so lazy runtime initialisation is not counted as model memory), then records its
resident set (baseline); then it loads the configuration, runs one inference pass over the 32-row batch and records
the resident set again: the difference is the configuration's memory (weights actually paged in + what the pass
keeps). Configurations: (a) one adapted model, (b) one module with K = 4 adapters (mixed 8/8/8/8 pass), (c) K = 4
separate adapted models (each on its 8 rows), and the frozen base alone. The peak growth during the pass
(`_report.peak_memory_mib`) and exact parameter bytes are reported too.
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _report  # noqa: E402

BENCHMARK = "serving"
SAMPLE = Path(__file__).resolve().parents[2] / "tasks" / "finance_sentiment" / "sample" / "test.csv"
# (adapter name, number of labels): the module's own adapter is always called "default"
ADAPTERS = [("default", 3), ("banking", 77), ("topic", 10), ("emotion", 5)]
STRATEGY_NAMES = {"lora": "LoRA r=8", "pfeiffer": "Pfeiffer bottleneck", "prefix": "prefix tuning"}
SINGLE = "single: 32 rows, one adapter"
MIXED = "mixed 8/8/8/8"
SKEWED = "mixed 29/1/1/1"
SPLIT = "4 x 8 rows, one adapter"
ROUTED = "routed, one adapter"
ONE_ROW = "1 row, one adapter"
ONE_MODEL = "1-adapter model: 32 rows"
BASE = "frozen base (AutoModel): 32 rows"
BASE_SPLIT = "frozen base (AutoModel): 4 x 8 rows"
PER_STRATEGY = [SINGLE, MIXED, SKEWED, SPLIT, ROUTED, ONE_ROW, ONE_MODEL]
SHARED = [BASE, BASE_SPLIT]  # timed once per thread count, reported against each strategy's single batch
TIME_ORDER = PER_STRATEGY + SHARED
MEMORY_CONFIGS = {"one": "(a) one adapted model", "k_on_one": "(b) K=4 adapters on one base",
                  "k_separate": "(c) K=4 separate adapted models"}


def build_strategy(kind: str):
    from lightning_adapters import Bottleneck, Lora, PrefixTuning

    return {"lora": lambda: Lora(r=8), "pfeiffer": lambda: Bottleneck(variant="pfeiffer"),
            "prefix": lambda: PrefixTuning()}[kind]()


def labels(n: int) -> list[str]:
    return [f"label_{i}" for i in range(n)]


def randomize(module, name: str, seed: int) -> None:
    """Adapters start as the identity (LoRA's B, a bottleneck's up projection are zero): give them real weights."""
    from lightning_adapters.strategies import adapter_named_parameters

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in adapter_named_parameters(module.backbone, name):
            param.add_(0.02 * torch.randn(param.shape, generator=generator))


def build_k_module(backbone: str, kind: str, k: int = len(ADAPTERS)):
    """One base, adapters ``ADAPTERS[:k]`` of strategy ``kind``, eval mode."""
    from lightning_adapters import AdapterModule, ClassificationHead

    module = AdapterModule(backbone, strategy=build_strategy(kind), label_names=labels(ADAPTERS[0][1]))
    for name, n in ADAPTERS[1:k]:
        module.add_adapter(name, build_strategy(kind), ClassificationHead(), label_names=labels(n))
    for seed, (name, _) in enumerate(ADAPTERS[:k]):
        randomize(module, name, seed)
    return module.eval()


def build_one_model(backbone: str, kind: str, adapter: int):
    """A separate adapted model: one base + adapter ``ADAPTERS[adapter]`` (as its own ``default``)."""
    from lightning_adapters import AdapterModule

    module = AdapterModule(backbone, strategy=build_strategy(kind), label_names=labels(ADAPTERS[adapter][1]))
    randomize(module, "default", adapter)
    return module.eval()


def load_base(backbone: str):
    from transformers import AutoModel

    from lightning_adapters.backbone import resolve

    return AutoModel.from_pretrained(resolve(backbone).path).eval()


# ---- data ----------------------------------------------------------------------------------------------------
def make_batch(backbone: str, rows: int, seq_len: int) -> dict[str, torch.Tensor]:
    """``rows`` rows of exactly ``seq_len`` real tokens: sentence i of the sample, then the next ones, truncated."""
    from lightning_adapters.backbone import load_tokenizer

    with open(SAMPLE, newline="", encoding="utf-8") as f:
        sentences = [row["sentence"] for row in csv.DictReader(f)]
    texts = [" ".join(sentences[(i + j) % len(sentences)] for j in range(8)) for i in range(rows)]
    enc = load_tokenizer(backbone)(texts, truncation=True, max_length=seq_len, padding="max_length",
                                   return_tensors="pt")
    batch = {k: v for k, v in enc.items() if isinstance(v, torch.Tensor)}
    if not bool(batch["attention_mask"].all()):
        raise SystemExit(f"some rows are shorter than {seq_len} tokens: use a smaller --seq-len")
    return batch


def routes(rows: int) -> dict[str, list[str]]:
    names = [name for name, _ in ADAPTERS]
    skewed = [names[0]] * rows
    for i, name in enumerate(names[1:]):  # one row each, spread over the batch
        skewed[(i + 1) * rows // len(names) - 1] = name
    return {MIXED: [names[i % len(names)] for i in range(rows)], SKEWED: skewed, ROUTED: [names[0]] * rows}


def with_route(batch: dict[str, torch.Tensor], route: list[str]) -> dict[str, Any]:
    return {**batch, "adapter_names": list(route)}


# ---- parameter bytes (exact) ------------------------------------------------------------------------------------
def parameter_bytes(module) -> dict[str, Any]:
    """Bytes of the frozen base, and of each adapter's layers + head, in the K-adapter module."""
    from lightning_adapters.strategies import adapter_named_parameters

    def nbytes(params) -> int:
        return sum(p.numel() * p.element_size() for p in params)

    adapter_ids = {id(p) for _, p in adapter_named_parameters(module.backbone)}
    base = nbytes(p for p in module.backbone.parameters() if id(p) not in adapter_ids)
    per = {name: nbytes(p for _, p in adapter_named_parameters(module.backbone, name))
           + nbytes(module.head_of(name).parameters()) for name in module.adapter_names}
    one = base + per["default"]
    return {"base": base, "adapters": per, "one": one, "k_on_one": base + sum(per.values()),
            "k_separate": sum(base + b for b in per.values())}


# ---- timing ------------------------------------------------------------------------------------------------------
def max_routing_error(module, batch: dict[str, torch.Tensor], route: list[str]) -> float:
    """Largest |mixed-batch logit - the same row's logit in a single-adapter batch of all rows|."""
    with torch.inference_mode():
        mixed = module(with_route(batch, route))
        worst = 0.0
        for name, (rows, logits) in mixed.items():
            module.set_active_adapters(name)
            alone = module(batch)[rows]
            worst = max(worst, (logits - alone).abs().max().item())
        module.set_active_adapters("default")
    if [n for n in dict.fromkeys(route)] != list(mixed) or sum(len(r) for r, _ in mixed.values()) != len(route):
        raise AssertionError(f"mixed batch returned adapters {list(mixed)} for a batch routed to "
                             f"{list(dict.fromkeys(route))}")
    return worst


def time_rounds(calls: dict[str, tuple[int, Callable[[], Any]]], rounds: int, warmup: int) -> dict[str, list[float]]:
    """Every call (run with its torch thread count) once per round, the order rotating each round; seconds per
    call."""
    names = list(calls)
    for name in names:
        torch.set_num_threads(calls[name][0])
        for _ in range(warmup):
            calls[name][1]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            threads, call = calls[name]
            torch.set_num_threads(threads)
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
        print(f"[serving] timing round {r + 1}/{rounds} done", flush=True)
    return times


def key(threads: int, kind: str, config: str) -> str:
    """Timing key; the shared configurations (the frozen base) are under kind ``base``."""
    return f"{threads}t|{'base' if config in SHARED else kind}|{config}"


def quarters(batch: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    size = len(batch["input_ids"]) // 4
    return [{k: v[i * size:(i + 1) * size] for k, v in batch.items()} for i in range(4)]


def timing_calls(module, one_model, batch: dict[str, torch.Tensor]) -> dict[str, Callable]:
    rows = len(batch["input_ids"])
    mixed = {label: with_route(batch, route) for label, route in routes(rows).items()}
    parts = quarters(batch)
    one_row = {k: v[:1] for k, v in batch.items()}
    module.set_active_adapters("default")  # routing restores this after every mixed batch

    def split() -> None:
        for part in parts:
            module(part)

    return {SINGLE: lambda: module(batch), MIXED: lambda: module(mixed[MIXED]), SKEWED: lambda: module(mixed[SKEWED]),
            SPLIT: split, ROUTED: lambda: module(mixed[ROUTED]), ONE_ROW: lambda: module(one_row),
            ONE_MODEL: lambda: one_model(batch)}


def base_calls(base, batch: dict[str, torch.Tensor]) -> dict[str, Callable]:
    from lightning_adapters.heads.base import backbone_inputs

    inputs = backbone_inputs(batch, base)
    parts = [backbone_inputs(part, base) for part in quarters(batch)]

    def split() -> None:
        for part in parts:
            base(**part)

    return {BASE: lambda: base(**inputs), BASE_SPLIT: split}


def measure_time(args: argparse.Namespace, batch: dict[str, torch.Tensor]) -> tuple[dict, dict, dict, dict]:
    """(times per 'kind|config', routing errors, parameter bytes per kind, kinds not measurable and why)."""
    from lightning_adapters import UserInputError

    base = load_base(args.backbone)
    calls = {key(threads, "base", config): (threads, call) for threads in args.threads
             for config, call in base_calls(base, batch).items()}
    errors, params, skipped = {}, {}, {}
    for kind in args.strategies:
        try:
            module = build_k_module(args.backbone, kind)
        except UserInputError as err:
            skipped[kind] = str(err).splitlines()[0]
            print(f"[serving] {kind}: K={len(ADAPTERS)} adapters on one base refused: {skipped[kind]}", flush=True)
            continue
        one_model = build_one_model(args.backbone, kind, 0)
        params[kind] = parameter_bytes(module)
        errors[kind] = {label: max_routing_error(module, batch, route)
                        for label, route in routes(len(batch["input_ids"])).items()}
        print(f"[serving] {kind}: max |mixed - single| logit difference {errors[kind]}", flush=True)
        calls.update({key(threads, kind, config): (threads, call) for threads in args.threads
                      for config, call in timing_calls(module, one_model, batch).items()})
    torch.set_grad_enabled(False)
    with torch.inference_mode():
        times = time_rounds(calls, args.rounds, args.warmup)
    return times, errors, params, skipped


# ---- memory (one configuration per fresh process) ----------------------------------------------------------------
def rss_kib() -> dict[str, int]:
    """Resident set, its anonymous (private) part and the proportional set size, KiB."""
    fields = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        fields[key] = int(value.split()[0])
    return {"rss": fields["Rss"], "anonymous": fields["Anonymous"], "pss": fields["Pss"]}


def growth_mib(res: dict[str, Any], field: str = "rss") -> float:
    """MiB a configuration added to the warmed-up process after load + one pass."""
    return (res["after"][field] - res["before"][field]) / 1024


def warm_runtime(backbone: str, kind: str | None, batch: dict[str, torch.Tensor]) -> None:
    """Run a tiny model of the same architecture (and strategy, single and mixed) once, then drop it: whatever the
    runtime initialises lazily on a first pass is then in the baseline, not in the configuration's memory."""
    from transformers import AutoConfig, AutoModel

    from lightning_adapters import AdapterModule, ClassificationHead
    from lightning_adapters.backbone import resolve

    config = AutoConfig.from_pretrained(resolve(backbone).path)
    for key, value in {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
                       "vocab_size": 128}.items():
        setattr(config, key, value)
    tiny_batch = {k: v % 128 if k == "input_ids" else v for k, v in batch.items()}
    with tempfile.TemporaryDirectory() as folder:
        AutoModel.from_config(config).save_pretrained(folder)
        with torch.inference_mode():
            load_base(folder)(**{k: v for k, v in tiny_batch.items() if k != "token_type_ids"})
            if kind is not None:
                module = AdapterModule(folder, strategy=build_strategy(kind), label_names=labels(3)).eval()
                module.add_adapter("other", build_strategy(kind), ClassificationHead(), label_names=labels(5))
                module(tiny_batch)
                module(with_route(tiny_batch, ["default", "other"] * (len(batch["input_ids"]) // 2)))
                del module
    gc.collect()


def memory_worker(spec: dict[str, Any]) -> dict[str, Any]:
    _report.setup_runtime(spec["threads"])
    import lightning_adapters  # noqa: F401  (imports are baseline)

    batch = torch.load(spec["batch"], weights_only=True)
    rows = len(batch["input_ids"])
    route = routes(rows)[MIXED]
    warm_runtime(spec["backbone"], spec["kind"], batch)
    before = rss_kib()
    config, kind = spec["config"], spec["kind"]
    if config == "base":
        from lightning_adapters.heads.base import backbone_inputs

        base = load_base(spec["backbone"])
        run = lambda: base(**backbone_inputs(batch, base))  # noqa: E731
    elif config == "one":
        module = build_one_model(spec["backbone"], kind, 0)
        run = lambda: module(batch)  # noqa: E731
    elif config == "k_on_one":
        module = build_k_module(spec["backbone"], kind)
        run = lambda: module(with_route(batch, route))  # noqa: E731
    else:
        models = [build_one_model(spec["backbone"], kind, i) for i in range(len(ADAPTERS))]
        parts = [{k: v[[r for r in range(rows) if route[r] == name]] for k, v in batch.items()}
                 for name, _ in ADAPTERS]

        def run() -> None:
            for model, part in zip(models, parts, strict=True):
                model(part)
    loaded = rss_kib()

    def inference() -> None:
        with torch.inference_mode():
            run()

    peak_growth = _report.peak_memory_mib(inference, torch.device("cpu"))
    after = rss_kib()
    return {"before": before, "loaded": loaded, "after": after, "peak_growth_mib": peak_growth,
            "device": _report.hardware()}


def measure_memory(args: argparse.Namespace, kinds: list[str], batch_file: Path) -> dict[tuple[str, str], dict]:
    configs = [("base", None)] + [(config, kind) for kind in kinds for config in MEMORY_CONFIGS]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 16)}
    results = {}
    for config, kind in configs:
        spec = {"config": config, "kind": kind, "backbone": args.backbone, "threads": args.threads[0],
                "batch": str(batch_file)}
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
                              capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            print(f"[serving] memory {config}/{kind} failed:\n{proc.stderr[-2000:]}", flush=True)
            continue
        results[(config, kind or "")] = json.loads(proc.stdout.strip().splitlines()[-1])
        res = results[(config, kind or "")]
        print(f"[serving] memory {config}/{kind}: +{(res['after']['rss'] - res['before']['rss']) / 1024:.1f} MiB "
              f"RSS", flush=True)
    return results


# ---- report ------------------------------------------------------------------------------------------------------
def median_ms(times: list[float]) -> float:
    return 1000 * statistics.median(times)


def quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4)
    return q[0], q[2]


def per_round(times: dict, threads: int, kind: str, config: str) -> list[float]:
    """Each round's latency ratio of ``config`` to that round's single-adapter batch."""
    return [m / s for m, s in zip(times[key(threads, kind, config)], times[key(threads, kind, SINGLE)], strict=True)]


class Report:
    """Turns the measurements into records, tables, acceptance checks and notes."""

    def __init__(self, args: argparse.Namespace, times: dict, errors: dict, params: dict, skipped: dict,
                 memory: dict, load: tuple[float, float]) -> None:
        self.args, self.times, self.errors, self.params, self.skipped, self.memory = (args, times, errors, params,
                                                                                      skipped, memory)
        self.kinds = [k for k in args.strategies if k not in skipped]
        self.med = {name: median_ms(values) for name, values in times.items()}
        device = next(iter(memory.values()))["device"] if memory else _report.hardware()
        device = device.split(", torch threads")[0]
        self.setup = (f"{args.backbone}, K={len(ADAPTERS)} adapters of one strategy on one base, heads of "
                      f"{'/'.join(str(n) for _, n in ADAPTERS)} labels, batch {args.batch_size} x {args.seq_len} real "
                      f"tokens, eval + inference_mode, {args.rounds} interleaved rounds (median), {device}, torch "
                      f"threads {'/'.join(map(str, args.threads))} (memory: {args.threads[0]}), 1-min load average "
                      f"{load[0]:.1f} at start, {load[1]:.1f} at end, {_report.versions()}")
        self.records: list[dict[str, Any]] = []

    def rec(self, task: str, method: str, metric: str, value: float, unit: str) -> None:
        self.records.append(_report.record(BENCHMARK, task, method, metric, value, unit, self.setup))

    def ratio(self, threads: int, kind: str, config: str) -> float:
        return self.med[key(threads, kind, config)] / self.med[key(threads, kind, SINGLE)]

    def latency_table(self, threads: int) -> str:
        rows = []
        for config in TIME_ORDER:
            cells = [config]
            for kind in self.kinds:
                ms, ratio = self.med[key(threads, kind, config)], self.ratio(threads, kind, config)
                method = f"{STRATEGY_NAMES[kind]}: {config}"
                self.rec(f"latency, {threads} threads", method, "median latency", round(ms, 2), "ms")
                self.rec(f"latency, {threads} threads", method, "latency / single-adapter batch", round(ratio, 3),
                         "x")
                cells.append(f"{ms:.0f} ({ratio:.2f}x)")
            rows.append(cells)
        return _report.markdown_table([f"{threads} thread(s): 32 rows x 64 tokens, K=4 module unless said"]
                                      + [f"{STRATEGY_NAMES[k]}: ms (x single)" for k in self.kinds], rows)

    def memory_table(self) -> tuple[str, dict]:
        rows, ratios = [], {}
        base = self.memory.get(("base", ""))
        if base and self.params:
            base_mib = next(iter(self.params.values()))["base"] / 2**20
            self.rec("memory", "frozen base (AutoModel)", "resident memory after load + 1 pass",
                     round(growth_mib(base), 1), "MiB")
            rows.append(["-", "frozen base alone (AutoModel)", f"{growth_mib(base):.1f}", "", f"{base_mib:.2f}", ""])
        for kind in self.kinds:
            one = self.memory.get(("one", kind))
            for config, label in MEMORY_CONFIGS.items():
                method = f"{STRATEGY_NAMES[kind]}: {label}"
                pbytes, pratio = self.params[kind][config], self.params[kind][config] / self.params[kind]["one"]
                self.rec("memory", method, "parameter bytes", pbytes, "B")
                self.rec("memory", method, "parameter bytes / one adapted model", round(pratio, 4), "x")
                res = self.memory.get((config, kind))
                if res is None or one is None:
                    rows.append([STRATEGY_NAMES[kind], label, "failed", "", f"{pbytes / 2**20:.2f}", f"{pratio:.3f}x"])
                    continue
                ratio = growth_mib(res) / growth_mib(one)
                ratios[(config, kind)] = ratio
                self.rec("memory", method, "resident memory after load + 1 pass", round(growth_mib(res), 1), "MiB")
                self.rec("memory", method, "resident memory / one adapted model", round(ratio, 3), "x")
                self.rec("memory", method, "anonymous (private) memory after load + 1 pass",
                         round(growth_mib(res, "anonymous"), 1), "MiB")
                self.rec("memory", method, "proportional set size (shared pages split) after load + 1 pass",
                         round(growth_mib(res, "pss"), 1), "MiB")
                self.rec("memory", method, "whole-process RSS / one adapted model's process",
                         round(res["after"]["rss"] / one["after"]["rss"], 3), "x")
                self.rec("memory", method, "peak RSS growth during the pass", round(res["peak_growth_mib"], 1), "MiB")
                rows.append([STRATEGY_NAMES[kind], label, f"{growth_mib(res):.1f}", f"{ratio:.2f}x",
                             f"{pbytes / 2**20:.2f}", f"{pratio:.3f}x"])
        return _report.markdown_table(["strategy", "configuration", "resident memory after load + 1 pass (MiB)",
                                       "x (a)", "parameters (MiB)", "x (a)"], rows), ratios

    def checks(self, mem_ratios: dict) -> list[str]:
        lines = []
        if self.kinds and all(("k_on_one", k) in mem_ratios and ("k_separate", k) in mem_ratios for k in self.kinds):
            worst = max(mem_ratios[("k_on_one", k)] for k in self.kinds)
            detail = "; ".join(
                f"{STRATEGY_NAMES[k]} {mem_ratios[('k_on_one', k)]:.3f}x (K separate models: "
                f"{mem_ratios[('k_separate', k)]:.2f}x; parameter bytes "
                f"{self.params[k]['k_on_one'] / self.params[k]['one']:.3f}x vs "
                f"{self.params[k]['k_separate'] / self.params[k]['one']:.2f}x)" for k in self.kinds)
            lines.append(_report.check_line("K=4 adapters on one base use <= 1.1 x the resident memory of one adapted "
                                            "model", worst <= 1.1, detail))
        else:
            lines.append("- **NOT MEASURED** — memory: a memory subprocess failed or was skipped (see the log)")
        for threads in self.args.threads:
            ratios = {k: self.ratio(threads, k, MIXED) for k in self.kinds}
            detail = "; ".join(f"{STRATEGY_NAMES[k]} {ratios[k]:.2f}x (per-round ratios' quartiles "
                               f"{'-'.join(f'{q:.2f}' for q in quartiles(per_round(self.times, threads, k, MIXED)))})"
                               for k in self.kinds)
            lines.append(_report.check_line(f"a mixed batch of 32 rows over 4 adapters runs within 1.15 x a "
                                            f"single-adapter batch of 32 ({threads} thread(s))",
                                            max(ratios.values()) <= 1.15, detail))
        return lines

    def notes(self, threads: int) -> list[str]:
        med = self.med
        base_split = med[key(threads, "", BASE_SPLIT)] / med[key(threads, "", BASE)] - 1
        lines = [f"- The frozen base alone, as 4 passes of 8 rows instead of 1 of 32: {100 * base_split:+.1f}% "
                 "(what smaller passes cost with no adapter code at all)."]
        for kind in self.kinds:
            single = med[key(threads, kind, SINGLE)]
            smaller = med[key(threads, kind, SPLIT)] / single - 1
            switching = (med[key(threads, kind, MIXED)] - med[key(threads, kind, SPLIT)]) / single
            routed = self.ratio(threads, kind, ROUTED) - 1
            lines.append(
                f"- {STRATEGY_NAMES[kind]}: mixed 8/8/8/8 = single {100 * (self.ratio(threads, kind, MIXED) - 1):+.1f}%"
                f": 4 smaller passes (4 x 8 rows, one adapter) {100 * smaller:+.1f}%, adapter switching + row routing "
                f"{100 * switching:+.1f}%; routing bookkeeping on one full pass {100 * routed:+.1f}%; a 1-row pass "
                f"{self.ratio(threads, kind, ONE_ROW):.2f}x of 32 rows; vs the frozen base: K=4 module "
                f"{single / med[key(threads, kind, BASE)]:.2f}x, 1-adapter model "
                f"{med[key(threads, kind, ONE_MODEL)] / med[key(threads, kind, BASE)]:.2f}x.")
        return lines

    def write(self, wall_s: float) -> str:
        args = self.args
        latency = [self.latency_table(threads) for threads in args.threads]
        memory_table, mem_ratios = self.memory_table()
        checks = self.checks(mem_ratios)
        for kind in self.kinds:
            for config, error in self.errors[kind].items():
                self.rec("routing", f"{STRATEGY_NAMES[kind]}: {config}",
                         "max |mixed - single-adapter batch| logit difference", error, "logit")
        exact = "; ".join(f"{STRATEGY_NAMES[k]} {max(self.errors[k].values()):.1e}" for k in self.kinds)
        skipped = [f"- {STRATEGY_NAMES[kind]}: not measured — K={len(ADAPTERS)} adapters on one base are refused: "
                   f"\"{why}\"." for kind, why in self.skipped.items()]
        command = "python recipes/benchmark/serving.py" + " ".join(
            [""] + (["--quick"] if args.quick else []) + (["--threads", *map(str, args.threads)]
                                                          if args.threads != [2] else []))
        parts = ["# Serving many adapters on one base", f"Setup: {self.setup}.",
                 f"Command: `{command}` (wall time {wall_s / 60:.1f} min)", "## Acceptance (issue 12)",
                 "\n".join(checks), "## Latency",
                 "Median ms over the rounds, and the ratio to the single-adapter batch of the same 32 rows (same "
                 "module, adapter fixed) measured in the same rounds. Routing is exact: the largest |mixed - "
                 f"single-adapter| logit difference is {exact}."]
        for threads, table in zip(args.threads, latency, strict=True):
            parts += [table, f"Where the time goes ({threads} thread(s)):\n\n" + "\n".join(self.notes(threads))]
        if skipped:
            parts.append("\n".join(skipped))
        parts += ["## Memory",
                  "Each configuration in a fresh process: resident set growth over the warmed-up process after loading "
                  "it and one inference pass of the 32-row batch; parameter bytes are exact.", memory_table,
                  "Resident memory counts every page a configuration maps, so K separate models count the frozen base "
                  "K times. On the CPU, transformers memory-maps the fp32 safetensors file (private, copy-on-write), "
                  "so the operating system can share those unwritten pages among models loaded from the same file "
                  "(results.json also holds the proportional set size, which splits them); on a GPU, or with a cast "
                  "dtype, each copy is allocated. The frozen embedding matrix is paged in only where the batch's "
                  "tokens touch it, so resident memory stays below the parameter bytes."]
        text = "\n\n".join(parts) + "\n"
        args.out.mkdir(parents=True, exist_ok=True)
        _report.write_json(args.out, self.records)
        (args.out / "results.md").write_text(text)
        self.plot(mem_ratios, args.out / "serving.png")
        return text

    def plot(self, mem_ratios: dict, path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        args, kinds = self.args, self.kinds
        series = [(threads, kind) for threads in args.threads for kind in kinds]
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(16, 5.4), gridspec_kw={"width_ratios": [3, 2]})
        configs = [c for c in TIME_ORDER if c != SINGLE]
        width = 0.8 / max(len(series), 1)
        for j, (threads, kind) in enumerate(series):
            values = [self.ratio(threads, kind, c) for c in configs]
            xs = [i + (j - (len(series) - 1) / 2) * width for i in range(len(configs))]
            ax1.bar(xs, values, width, label=f"{STRATEGY_NAMES[kind]}, {threads} thread(s)")
            for x, v in zip(xs, values, strict=True):
                ax1.text(x, v, f"{v:.2f}", ha="center", va="bottom", fontsize=6)
        ax1.axhline(1.0, color="black", lw=0.8)
        ax1.axhline(1.15, color="red", lw=0.8, ls="--", label="1.15 x (acceptance, mixed 8/8/8/8)")
        ax1.set_xticks(range(len(configs)), configs, rotation=25, ha="right", fontsize=8)
        ax1.set_ylabel("median latency / single-adapter batch of 32 rows")
        ax1.legend(fontsize=7)
        names = ["(b) K=4 on one base\nresident", "(c) K=4 separate\nresident", "(b) K=4 on one base\nparameters",
                 "(c) K=4 separate\nparameters"]
        width = 0.8 / max(len(kinds), 1)
        for j, kind in enumerate(kinds):
            values = [mem_ratios.get(("k_on_one", kind), 0.0), mem_ratios.get(("k_separate", kind), 0.0),
                      self.params[kind]["k_on_one"] / self.params[kind]["one"],
                      self.params[kind]["k_separate"] / self.params[kind]["one"]]
            xs = [i + (j - (len(kinds) - 1) / 2) * width for i in range(len(values))]
            ax2.bar(xs, values, width, label=STRATEGY_NAMES[kind])
            for x, v in zip(xs, values, strict=True):
                ax2.text(x, v, f"{v:.2f}", ha="center", va="bottom", fontsize=7)
        ax2.axhline(1.1, color="red", lw=0.8, ls="--", label="1.1 x (acceptance, b)")
        ax2.set_xticks(range(len(names)), names, fontsize=8)
        ax2.set_ylabel("memory / (a) one adapted model")
        ax2.legend(fontsize=8)
        fig.suptitle(f"{args.backbone}, K=4 adapters, batch {args.batch_size} x {args.seq_len}, CPU", fontsize=10)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=_report.default_out(BENCHMARK))
    p.add_argument("--quick", action="store_true", help="smoke test: LoRA only, 3 rounds, 1 warm-up call")
    p.add_argument("--threads", type=int, nargs="+", default=[2],
                   help="torch.set_num_threads (default 2); several values are timed interleaved in the same rounds "
                        "(memory uses the first)")
    p.add_argument("--backbone", default="minilm")
    p.add_argument("--strategies", nargs="+", default=["lora", "pfeiffer", "prefix"], choices=list(STRATEGY_NAMES))
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2, help="warm-up calls per configuration")
    p.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.strategies, args.rounds, args.warmup = ["lora"], 3, 1
    if args.batch_size % len(ADAPTERS):
        p.error(f"--batch-size must be a multiple of {len(ADAPTERS)}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(memory_worker(json.loads(args.worker))))
        return
    start, load_start = time.perf_counter(), os.getloadavg()[0]
    _report.setup_runtime(args.threads[0])
    batch = make_batch(args.backbone, args.batch_size, args.seq_len)
    times, errors, params, skipped = measure_time(args, batch)
    with tempfile.TemporaryDirectory() as tmp:
        batch_file = Path(tmp) / "batch.pt"
        torch.save(batch, batch_file)
        kinds = [kind for kind in args.strategies if kind not in skipped]
        memory = {} if args.no_memory else measure_memory(args, kinds, batch_file)
    report = Report(args, times, errors, params, skipped, memory, (load_start, os.getloadavg()[0]))
    print(report.write(time.perf_counter() - start))


if __name__ == "__main__":
    main()
