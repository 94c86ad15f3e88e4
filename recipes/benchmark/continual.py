"""Continual learning on real data: three tasks in sequence on one MiniLM, adapters vs sequential full fine-tuning.

One command:

    python recipes/benchmark/continual.py --jobs 2   # -> recipes/benchmark/results/continual/{results.md,json,png}
    python recipes/benchmark/continual.py --quick    # smoke test (~2 min): 1 epoch of 2 batches per stage

(``--from-chains results/continual/chains.json`` writes results.md/json/png again from a run's raw figures.)

The sequence (issue 12), read from ``--data-root``:

A. Financial PhraseBank AllAgree sentiment (seeded stratified 80/20 test split, as `accuracy.py`);
B. BANKING77 intents (official 3,080-row test split; a seeded subset of the training rows, ``--banking77-train``);
C. CoNLL-2003 NER (eng.testa picks the epoch, eng.testb is reported; a seeded subset of eng.train, ``--conll-train``).

Adapters (ours): ONE `AdapterModule`; A trains its ``default`` adapter (Houlsby bottleneck), then
``add_adapter("intent", Lora(...), ClassificationHead())`` + ``train_adapter("intent")`` for B, then
``add_adapter("ner", PrefixTuning(...), TokenClassificationHead())`` + ``train_adapter("ner")`` for C.
Sequential full fine-tuning: ONE MiniLM backbone, fully trained on A with head A, then the same backbone object
continues on B (head B new, head A kept), then on C.

After every stage every task trained so far is tested on its test split (adapters: ``set_active_adapters(name)``;
full fine-tuning: the shared backbone with that task's own head), and the logits of a fixed batch (the first
``--logit-rows`` test rows) are compared with those taken right after the task was trained: max |difference| and
``torch.equal``. For adapters both must show no change at all (zero forgetting by construction); full fine-tuning's
drop is the forgetting it suffers.

Budget rule, the same for both methods: per task the same epochs, training subset, batch size and seed; linear
warm-up (10 %) and decay; validation after every epoch, the weights of the epoch with the best validation score
kept in memory (`accuracy.BestOnValidation`; no checkpoint files) and tested. ``--jobs 2`` runs the two methods at
the same time in two processes (``--threads`` each); results are the same as one after the other.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _report  # noqa: E402
import accuracy  # noqa: E402 — data modules, length bucketing, best-epoch weights
import ner  # noqa: E402 — the CoNLL-2003 data module with a seeded training subset
import strategies  # noqa: E402 — the shared LoRA configuration

BENCHMARK = "continual"
ADAPTERS, FULL = "adapters (ours)", "sequential full fine-tuning"
METHODS = [ADAPTERS, FULL]


@dataclass(frozen=True)
class Task:
    key: str  # data-module key: fpb / banking77 / conll
    adapter: str  # the adapter's name on the one module
    title: str
    short: str
    metric: str  # the reported test metric (logged name without the test_ prefix)
    monitor: str  # the validation metric that picks the epoch


TASKS = [Task("fpb", "default", "Financial PhraseBank AllAgree", "FPB", "accuracy", "val_accuracy"),
         Task("banking77", "intent", "BANKING77", "BANKING77", "accuracy", "val_accuracy"),
         Task("conll", "ner", "CoNLL-2003 NER (eng.testb)", "CoNLL-2003", "f1", "val_f1")]
# How stage C's prefix configuration was chosen: each trained alone (no earlier adapters) on the same 3,000-sentence
# eng.train subset, 2 epochs, batch 16, seed 42, validation entity F1 on all of eng.testa; test never looked at.
PILOT = ("prefix tuning for CoNLL-2003 chosen on validation in a pilot (the stage-C prefix alone on the same 3,000 "
         "training sentences, 2 epochs, validation entity F1 on all of eng.testa after epochs 1/2): MLP "
         "reparameterisation, random init, lr 1e-3: 49.56/62.61; lr 5e-3: 0.00/0.00 (every token tagged O); plain "
         "prefixes, random init, lr 3e-2: 64.97/71.29; plain prefixes from the text, lr 1e-2: 62.46/68.48, 3e-2: "
         "65.14/71.21, 1e-1: 67.32/72.25 (chosen)")
RECORDED = {"accuracy", "macro_f1", "f1", "precision", "recall", "loss", "f1_PER", "f1_ORG", "f1_LOC", "f1_MISC"}
METRIC_NAME = {"accuracy": "test accuracy", "f1": "test entity F1", "macro_f1": "test macro-F1"}
PREFIX_TEXT = "Find the names of people, organizations, locations and other entities in this sentence."


# ---- data ---------------------------------------------------------------------------------------------------------
def make_data(task: Task, args: argparse.Namespace) -> accuracy.LengthBucketed:
    """The task's DataModule (our packs), training rows subsampled where asked, batches bucketed by length."""
    if task.key == "conll":
        inner = ner.make_datamodule(argparse.Namespace(
            data_root=args.data_root, max_length=args.ner_max_length, batch_size=args.ner_batch_size,
            eval_batch_size=args.eval_batch_size, seed=args.seed, train_sentences=args.conll_train,
            subset_seed=args.subset_seed))
        validation = inner.splits["validation"]
        if args.conll_val and args.conll_val < len(validation):  # the epoch pick: a seeded part of eng.testa
            keep = np.random.default_rng(args.subset_seed).permutation(len(validation))[:args.conll_val]
            inner.splits["validation"] = [validation[i] for i in sorted(keep.tolist())]
    else:
        inner = accuracy.make_datamodule(task.key, args.data_root, argparse.Namespace(
            split_seed=args.split_seed, max_length=args.max_length, batch_size=args.batch_size,
            eval_batch_size=args.eval_batch_size))
        keep = args.banking77_train if task.key == "banking77" else 0
        train = inner.splits["train"]
        if keep and keep < len(train[0]):
            rows = sorted(np.random.default_rng(args.subset_seed).permutation(len(train[0]))[:keep].tolist())
            inner.splits["train"] = tuple([column[i] for i in rows] for column in train)
    return accuracy.LengthBucketed(inner, args.seed)


def fixed_batch(data: accuracy.LengthBucketed, rows: int) -> dict[str, Any]:
    """The first ``rows`` test rows in file order, collated: the batch whose logits are compared across stages."""
    data.setup("test")
    base = data.inner.test_dataloader()
    return base.collate_fn([base.dataset[i] for i in range(min(rows, len(base.dataset)))])


# ---- models -------------------------------------------------------------------------------------------------------
def head_for(task: Task):
    from lightning_adapters.heads import ClassificationHead
    from lightning_adapters.heads.token_classification import TokenClassificationHead

    return TokenClassificationHead(dropout=0.1) if task.key == "conll" else ClassificationHead(pooling="mean",
                                                                                                dropout=0.1)


def adapter_strategy(task: Task, args: argparse.Namespace):
    from lightning_adapters.strategies import PrefixTuning

    if task.key == "fpb":
        return strategies.ours("bottleneck houlsby (ours)", reduction_factor=args.reduction_factor)
    if task.key == "banking77":
        return strategies.ours(strategies.LORA)  # r 8, alpha 16, query/value
    text = dict(init_text=PREFIX_TEXT, tokenizer="minilm") if not args.prefix_random_init else {}
    return PrefixTuning(num_virtual_tokens=args.prefix_tokens, reparameterize=args.prefix_mlp,
                        hidden=strategies.PREFIX_HIDDEN, **text)


def learning_rate(method: str, task: Task, args: argparse.Namespace) -> float:
    return getattr(args, f"{'full' if method == FULL else 'adapter'}_lr_{task.key}")


def adapter_description(args: argparse.Namespace) -> str:
    prefix = (f"prefix tuning {args.prefix_tokens} virtual tokens, "
              + (f"MLP reparameterisation width {strategies.PREFIX_HIDDEN}" if args.prefix_mlp else "plain prefixes")
              + (", random init" if args.prefix_random_init else f", initialised from the text {PREFIX_TEXT!r}"))
    lora = strategies.LORA_CONFIG
    return (f"A: bottleneck Houlsby reduction factor {args.reduction_factor} (default adapter); B: LoRA r {lora['r']}, "
            f"alpha {lora['alpha']}, {'/'.join(lora['target_modules'])}; C: {prefix}")


# ---- one method's chain of three stages ---------------------------------------------------------------------------
def fit(module: L.LightningModule, data, task: Task, epochs: int, args: argparse.Namespace):
    record = ("val_f1", "train_loss") if task.key == "conll" else ("val_accuracy", "val_macro_f1")
    best = accuracy.BestOnValidation(task.monitor, record)
    trainer = L.Trainer(max_epochs=epochs, accelerator="auto", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=[best], **limits(args, train=True))
    trainer.fit(module, datamodule=data)
    best.restore(module)
    return best


def limits(args: argparse.Namespace, train: bool = False) -> dict[str, int]:
    if not args.quick:
        return {}
    return dict(limit_train_batches=2, limit_val_batches=2, limit_test_batches=2) if train else dict(
        limit_test_batches=2)


def evaluate(module: L.LightningModule, data, args: argparse.Namespace) -> dict[str, float]:
    trainer = L.Trainer(accelerator="auto", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, **limits(args))
    scores = trainer.test(module, datamodule=data, verbose=False)[0]
    return {name.removeprefix("test_"): float(value) for name, value in scores.items()}


@torch.no_grad()
def logits_of(module: L.LightningModule, batch: dict[str, Any]) -> torch.Tensor:
    module.eval()
    device = next(module.parameters()).device
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    return module(batch).detach().cpu().clone()


def run_chain(method: str, args: argparse.Namespace) -> dict[str, Any]:
    """Train A, B, C in turn with ``method``; after each stage test every task so far. Returns plain data."""
    _report.setup_runtime(args.threads)
    from lightning_adapters import AdapterModule
    from lightning_adapters.strategies import FullFineTuning

    datas: dict[str, Any] = {}
    reference: dict[str, tuple[dict[str, Any], torch.Tensor]] = {}  # task -> (fixed batch, logits after training)
    modules: dict[str, AdapterModule] = {}  # full fine-tuning: one module per task, all sharing one backbone
    module = None
    out = {"method": method, "stages": [], "tasks": {}}
    chain_start = time.perf_counter()
    for index, task in enumerate(TASKS):
        L.seed_everything(args.seed, workers=True, verbose=False)
        start, cpu = time.perf_counter(), time.process_time()
        data = datas[task.key] = make_data(task, args)
        labels = data.label_names
        lr = learning_rate(method, task, args)
        if method == FULL:
            current = AdapterModule("minilm", strategy=FullFineTuning(), head=head_for(task), label_names=labels,
                                    learning_rate=lr, weight_decay=0.01, warmup_ratio=0.1)
            if modules:  # the same backbone continues: every task's module holds the one backbone object
                current.backbone = next(iter(modules.values())).backbone
            modules[task.key] = current
        elif module is None:
            module = current = AdapterModule("minilm", strategy=adapter_strategy(task, args), head=head_for(task),
                                             label_names=labels, learning_rate=lr, weight_decay=0.01,
                                             warmup_ratio=0.1)
        else:
            current = module
            module.add_adapter(task.adapter, adapter_strategy(task, args), head_for(task), label_names=labels)
            module.train_adapter(task.adapter)
            module.learning_rate = lr
        trainable = current.parameter_counts()[0]
        best = fit(current, data, task, args.epochs[task.key], args)
        train_wall, train_cpu = time.perf_counter() - start, time.process_time() - cpu
        if method == FULL:  # to keep this task as trained, a whole model must be stored: backbone + its head
            stored = sum(p.numel() for p in current.parameters())
        else:
            stored = sum(t.numel() for t in current.export_weights(task.adapter)[1].values())
        batch = fixed_batch(data, args.logit_rows)
        reference[task.key] = (batch, logits_of(current, batch))
        out["tasks"][task.key] = {"lr": lr, "trainable": trainable, "stored": stored, "best_epoch": best.best_epoch,
                                  "val_best": best.best, "history": best.history, "train_wall_s": train_wall,
                                  "train_cpu_s": train_cpu, "epochs": args.epochs[task.key]}
        stage = {"stage": index + 1, "trained": task.key, "scores": {}, "logit_max_abs_diff": {},
                 "logits_equal": {}}
        for earlier in TASKS[:index + 1]:
            if method == FULL:
                evaluated = modules[earlier.key]
            else:
                module.set_active_adapters(earlier.adapter)
                evaluated = module
            stage["scores"][earlier.key] = evaluate(evaluated, datas[earlier.key], args)
            batch, before = reference[earlier.key]
            now = logits_of(evaluated, batch)
            stage["logit_max_abs_diff"][earlier.key] = float((now - before).abs().max())
            stage["logits_equal"][earlier.key] = bool(torch.equal(now, before))
            print(f"[{method}] after stage {index + 1}: {earlier.short} {task_score(stage, earlier):.2f} "
                  f"(max |Δlogit| {stage['logit_max_abs_diff'][earlier.key]:.3g})", flush=True)
        stage["wall_s"], stage["cpu_s"] = time.perf_counter() - start, time.process_time() - cpu
        out["stages"].append(stage)
        if args.partial is not None:
            Path(f"{args.partial}.{METHODS.index(method)}.json").write_text(json.dumps(out, indent=1))
    if method == FULL:
        out["total_params"] = sum(p.numel() for p in modules["fpb"].backbone.parameters())
    else:
        from lightning_adapters.strategies import adapter_named_parameters

        adapter_weights = sum(p.numel() for _, p in adapter_named_parameters(module.backbone))
        out["total_params"] = sum(p.numel() for p in module.backbone.parameters()) - adapter_weights  # the base
    out["wall_s"] = time.perf_counter() - chain_start
    return out


def task_score(stage: dict[str, Any], task: Task, metric: str | None = None) -> float:
    return 100 * stage["scores"][task.key][metric or task.metric]


def _job(job: tuple[str, argparse.Namespace]) -> dict[str, Any]:
    return run_chain(*job)


# ---- report -------------------------------------------------------------------------------------------------------
def setup_string(args: argparse.Namespace) -> str:
    epochs = ", ".join(f"{t.short} {args.epochs[t.key]}" for t in TASKS)
    lrs = "; ".join(f"{t.short}: adapter {learning_rate(ADAPTERS, t, args):g}, full {learning_rate(FULL, t, args):g}"
                    for t in TASKS)
    b77 = f"a seeded random {args.banking77_train:,} of the training rows" if args.banking77_train else "all rows"
    conll = ner.subset_phrase(argparse.Namespace(train_sentences=args.conll_train, subset_seed=args.subset_seed))
    pick = f"a seeded {args.conll_val:,} of the 3,250 eng.testa sentences" if args.conll_val else "all of eng.testa"
    return (f"MiniLM (all-MiniLM-L6-v2); sequence A→B→C = FPB AllAgree (seeded stratified 80/20 test split, validation "
            f"10 % of the 80 %, all training rows) → BANKING77 (official 3,080-row test split, validation 10 % of "
            f"train, training on {b77}) → CoNLL-2003 ({conll}, epoch picked on {pick}, "
            f"tested on all of eng.testb); the same training subsets (subset seed "
            f"{args.subset_seed}), epochs ({epochs}), batches and seed for both methods; {adapter_description(args)}; "
            f"full fine-tuning: one backbone trained through all three tasks, a new head per task, earlier heads kept; "
            f"heads: mean pooling + dropout 0.1 + Linear (A, B), dropout 0.1 + Linear on the first sub-word (C); "
            f"lr {lrs}; AdamW wd 0.01, linear warm-up 10 % + decay; best epoch by validation (in memory); "
            f"length-bucketed batches of {args.batch_size} (A, B; max_length {args.max_length}) and "
            f"{args.ner_batch_size} (C; max_length {args.ner_max_length}); ONE training seed ({args.seed}), split "
            f"seed {args.split_seed}; logit check on the first {args.logit_rows} test rows of each task; "
            f"{_report.hardware()}; {_report.versions()}{'; QUICK smoke run' if args.quick else ''}")


def report(chains: dict[str, dict[str, Any]], args: argparse.Namespace, out: Path, wall_s: float, setup: str,
           command: str) -> list[str]:
    records = []

    def rec(task: Task | None, method: str, metric: str, value: float | int, unit: str) -> None:
        title = task.title if task else "sequence A→B→C"
        records.append(_report.record(BENCHMARK, title, method, metric,
                                      value if isinstance(value, (int, bool)) else round(value, 6), unit, setup))

    # stage table: rows = stage, columns = each task's score for both methods
    headers = ["after stage"] + [f"{t.short} {METRIC_NAME[t.metric]} % ({'adapters' if m == ADAPTERS else 'full FT'})"
                                 for t in TASKS for m in METHODS]
    rows = []
    for index, task in enumerate(TASKS):
        row = [f"{index + 1}: {task.short}"]
        for t in TASKS:
            for m in METHODS:
                stage = chains[m]["stages"][index]
                row.append(f"{task_score(stage, t):.2f}" if t.key in stage["scores"] else "–")
        rows.append(row)
        for m in METHODS:
            stage = chains[m]["stages"][index]
            for t in TASKS[:index + 1]:
                for metric, value in stage["scores"][t.key].items():  # per-class figures stay in chains.json
                    if metric in RECORDED:
                        scaled, unit = (value, "loss") if metric == "loss" else (100 * value, "%")
                        rec(t, m, f"test_{metric}_after_stage_{index + 1}", scaled, unit)
                rec(t, m, f"logit_max_abs_diff_after_stage_{index + 1}", stage["logit_max_abs_diff"][t.key], "logit")
            rec(None, m, f"stage_{index + 1}_wall_time", stage["wall_s"], "s")
            rec(None, m, f"stage_{index + 1}_cpu_time", stage["cpu_s"], "s")
    # forgetting: score right after training vs after the last stage
    forget_rows, checks = [], []
    last = len(TASKS)
    for index, task in enumerate(TASKS):
        for m in METHODS:
            stages = chains[m]["stages"]
            first, final = stages[index], stages[-1]
            drops = {metric: 100 * (first["scores"][task.key][metric] - final["scores"][task.key][metric])
                     for metric in ("accuracy", "macro_f1") if metric in first["scores"][task.key]}
            drops.setdefault("f1", 100 * (first["scores"][task.key].get("f1", 0)
                                          - final["scores"][task.key].get("f1", 0)))
            identical = all(s["scores"][task.key] == first["scores"][task.key] for s in stages[index:])
            equal = all(s["logits_equal"][task.key] for s in stages[index:])
            max_diff = max(s["logit_max_abs_diff"][task.key] for s in stages[index:])
            per_stage = " → ".join(f"{task_score(s, task):.2f}" for s in stages[index:])
            forget_rows.append([task.short, m, per_stage, f"{0.0 - drops[task.metric]:+.2f}",
                                f"{0.0 - drops['macro_f1']:+.2f}" if "macro_f1" in drops else "–",
                                "yes" if identical else "no", f"{max_diff:.3g}", "yes" if equal else "no"])
            rec(task, m, f"forgetting_{task.metric}_stage_{index + 1}_to_{last}", drops[task.metric], "pt")
            rec(task, m, "scores_identical_in_later_stages", identical, "bool")
            rec(task, m, "logits_torch_equal_in_later_stages", equal, "bool")
            if m == ADAPTERS and index < last - 1:
                checks.append(_report.check_line(
                    f"adapters: {task.short} unchanged by the later stages", identical and equal,
                    f"test scores identical: {'yes' if identical else 'NO'}, fixed-batch logits torch.equal: "
                    f"{'yes' if equal else 'NO'} (max |Δ| {max_diff:.3g})"))
    # parameters stored per task
    param_rows = []
    for task in TASKS:
        for m in METHODS:
            info = chains[m]["tasks"][task.key]
            param_rows.append([task.short, m, f"{info['lr']:g}", f"{info['best_epoch']}/{info['epochs']}",
                               f"{100 * info['val_best']:.2f}", f"{info['trainable']:,}", f"{info['stored']:,}",
                               f"{100 * info['stored'] / chains[m]['total_params']:.3f}",
                               f"{info['train_wall_s'] / 60:.1f}"])
            for key, unit in (("trainable", "count"), ("stored", "count"), ("best_epoch", "epoch"),
                              ("val_best", "%"), ("lr", "lr"), ("train_wall_s", "s"), ("train_cpu_s", "s")):
                value = 100 * info[key] if key == "val_best" else info[key]
                rec(task, m, {"trainable": "trainable_params", "stored": "stored_params_for_task",
                              "val_best": "val_best_epoch", "train_wall_s": "train_wall_time",
                              "train_cpu_s": "train_cpu_time"}.get(key, key), value, unit)
    for m in METHODS:
        rec(None, m, "chain_wall_time", chains[m]["wall_s"], "s")
    rec(None, "both", "benchmark_wall_time", wall_s, "s")
    _report.write_json(out, records)

    base = chains[ADAPTERS]["total_params"]
    adapters_total = sum(chains[ADAPTERS]["tasks"][t.key]["stored"] for t in TASKS)
    full_one = chains[FULL]["tasks"]["fpb"]["stored"]
    md = ["# Continual learning: FPB AllAgree → BANKING77 → CoNLL-2003 on one MiniLM", "",
          "Each task's test score after every stage (A, B: accuracy; C: seqeval entity F1 on eng.testb):", "",
          _report.markdown_table(headers, rows), "",
          "Forgetting (score right after the task was trained → after each later stage; Δ = last − first, pt; "
          f"logits: the first {args.logit_rows} test rows):", "",
          _report.markdown_table(["task", "method", "score per stage %", "Δ score", "Δ macro-F1",
                                  "scores identical", "max abs Δ logit", "logits torch.equal"], forget_rows), "",
          "Checks:", *checks, "",
          "Parameters stored per task (adapters: the exported adapter + head on the shared frozen base; full "
          "fine-tuning: a whole model, to keep the task as it was trained):", "",
          _report.markdown_table(["task", "method", "lr", "best epoch", "val best %", "trainable params",
                                  "stored params", "stored % of base", "train wall min"], param_rows), "",
          f"All three tasks: adapters store the frozen base once ({base:,}) + {adapters_total:,} adapter and head "
          f"weights; sequential full fine-tuning ends with one backbone + 3 heads that has forgotten A and B, and "
          f"keeping each task as trained takes 3 whole models ({3 * full_one:,}).", "",
          f"Wall time: {wall_s / 60:.1f} min in all (adapters chain {chains[ADAPTERS]['wall_s'] / 60:.1f} min, full "
          f"fine-tuning chain {chains[FULL]['wall_s'] / 60:.1f} min{', run side by side' if args.jobs > 1 else ''}).",
          "", f"Setup: {setup}", "", f"Learning rates: A and B as chosen on validation for `accuracy.py` / "
          f"`strategies.py`, full fine-tuning as `accuracy.py` and `ner.py`; {PILOT}.", "",
          "Validation per epoch (the monitored metric):"]
    md += [f"- {m} / {t.short}: " + ", ".join(f"{100 * h[t.monitor]:.2f}" for h in chains[m]["tasks"][t.key]["history"])
           for m in METHODS for t in TASKS]
    md += ["", f"Command: `{command}`", ""]
    (out / "results.md").write_text("\n".join(md))
    plot(chains, out / "continual.png")
    return md


def plot(chains: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(TASKS), figsize=(5 * len(TASKS), 4), squeeze=False)
    style = {ADAPTERS: dict(color="#1f77b4", marker="o"), FULL: dict(color="#7f7f7f", marker="s", ls="--")}
    for ax, (index, task) in zip(axes[0], enumerate(TASKS), strict=True):
        curves = {m: [(s["stage"], task_score(s, task)) for s in chains[m]["stages"][index:]] for m in METHODS}
        for m, points in curves.items():
            ax.plot(*zip(*points, strict=True), label=m, **style[m])
            other = dict(curves[FULL if m == ADAPTERS else ADAPTERS])
            for x, y in points:  # the higher of the two values labelled above its point, the lower below
                above = y > other[x] or (y == other[x] and m == ADAPTERS)
                ax.annotate(f"{y:.1f}", (x, y), textcoords="offset points", xytext=(0, 6 if above else -12),
                            ha="center", fontsize=8)
        ax.set_xticks(range(1, len(TASKS) + 1), [f"after {t.short}" for t in TASKS], fontsize=8)
        ax.set_xlim(0.7, len(TASKS) + 0.3)
        ax.set_ylim(-5, 105)
        ax.set_ylabel(f"{METRIC_NAME[task.metric]} (%)")
        ax.set_title(f"{chr(65 + index)}: {task.short}")
        ax.legend(fontsize=8, loc="lower left")
    fig.suptitle("Continual learning on one MiniLM: adapters vs sequential full fine-tuning", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---- command line -------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", type=Path, default=accuracy.default_data_root(),
                   help="folder holding financial_phrasebank/, banking77/, conll2003/ (default: "
                        "$LIGHTNING_ADAPTERS_DATA or shared/data beside the repository)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: results/continual beside this file)")
    p.add_argument("--quick", action="store_true", help="smoke test: 1 epoch of 2 batches per stage, 2 test batches")
    p.add_argument("--fpb-epochs", type=int, default=4)
    p.add_argument("--banking77-epochs", type=int, default=4)
    p.add_argument("--conll-epochs", type=int, default=4)
    p.add_argument("--banking77-train", type=int, default=3000, help="seeded training subset (0: all rows)")
    p.add_argument("--conll-train", type=int, default=3000, help="seeded eng.train subset (0: all 14,041)")
    p.add_argument("--conll-val", type=int, default=1000,
                   help="seeded eng.testa subset that picks the epoch (0: all 3,250); eng.testb is always complete")
    p.add_argument("--subset-seed", type=int, default=0)
    # Adapters: accuracy.py's / strategies.py's choices; full fine-tuning: accuracy.py's and ner.py's.
    p.add_argument("--adapter-lr-fpb", type=float, default=2e-3, help="Houlsby adapter (and head) learning rate")
    p.add_argument("--adapter-lr-banking77", type=float, default=2e-3, help="LoRA (and head) learning rate")
    p.add_argument("--adapter-lr-conll", type=float, default=1e-1,
                   help="prefix tuning (and head) learning rate (chosen on eng.testa in a pilot: see PILOT)")
    p.add_argument("--full-lr-fpb", type=float, default=5e-5)
    p.add_argument("--full-lr-banking77", type=float, default=1e-4)
    p.add_argument("--full-lr-conll", type=float, default=1e-4)
    p.add_argument("--reduction-factor", type=int, default=8, help="Houlsby bottleneck width = hidden // this")
    p.add_argument("--prefix-tokens", type=int, default=strategies.NUM_VIRTUAL_TOKENS)
    p.add_argument("--prefix-mlp", action="store_true", help="MLP reparameterisation instead of plain prefixes")
    p.add_argument("--prefix-random-init", action="store_true",
                   help=f"random prefixes instead of the keys and values of {PREFIX_TEXT!r}")
    p.add_argument("--max-length", type=int, default=64, help="classification tasks")
    p.add_argument("--ner-max-length", type=int, default=192)
    p.add_argument("--batch-size", type=int, default=32, help="classification tasks")
    p.add_argument("--ner-batch-size", type=int, default=16)
    p.add_argument("--eval-batch-size", type=int, default=128)
    p.add_argument("--logit-rows", type=int, default=32, help="test rows in the fixed batch whose logits are compared")
    p.add_argument("--seed", type=int, default=42, help="training seed (one seed: head/adapter init, dropout, order)")
    p.add_argument("--split-seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--jobs", type=int, default=1, choices=(1, 2), help="2: both methods at once, one process each")
    p.add_argument("--from-chains", type=Path, default=None, metavar="CHAINS_JSON",
                   help="train nothing: write the report again from a run's chains.json (its own settings)")
    args = p.parse_args(argv)
    if args.quick:
        args.fpb_epochs = args.banking77_epochs = args.conll_epochs = 1
        args.batch_size, args.ner_batch_size, args.eval_batch_size, args.max_length = 8, 8, 16, 32
        args.banking77_train, args.conll_train, args.conll_val, args.logit_rows = 200, 200, 200, 8
    args.epochs = {"fpb": args.fpb_epochs, "banking77": args.banking77_epochs, "conll": args.conll_epochs}
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    _report.setup_runtime(args.threads)
    if args.from_chains is not None:  # the run's own settings, setup line and command; nothing is trained
        saved = json.loads(args.from_chains.read_text())
        again = parse_args(saved["argv"])
        out = args.out or args.from_chains.parent
        print("\n".join(report(saved["chains"], again, out, saved["wall_s"], saved["setup"], saved["command"])))
        return
    missing = [d for d in ("financial_phrasebank", "banking77", "conll2003") if not (args.data_root / d).is_dir()]
    if missing:
        sys.exit(f"{', '.join(missing)} not found in {args.data_root} — pass --data-root or set "
                 "LIGHTNING_ADAPTERS_DATA")
    out = args.out or _report.default_out(BENCHMARK)
    out.mkdir(parents=True, exist_ok=True)
    args.partial = out / "partial"
    start = time.perf_counter()
    if args.jobs > 1:
        context = multiprocessing.get_context("spawn")  # no forked torch/tokenizer state
        with concurrent.futures.ProcessPoolExecutor(2, mp_context=context) as pool:
            chains = dict(zip(METHODS, pool.map(_job, [(m, args) for m in METHODS]), strict=True))
    else:
        chains = {m: run_chain(m, args) for m in METHODS}
    wall_s, setup = time.perf_counter() - start, setup_string(args)
    command = f"python recipes/benchmark/continual.py {shlex.join(argv if argv is not None else sys.argv[1:])}"
    saved = {"argv": list(argv if argv is not None else sys.argv[1:]), "command": command, "setup": setup,
             "wall_s": wall_s, "chains": chains}  # everything measured, per-class test figures included
    (out / "chains.json").write_text(json.dumps(saved, indent=1) + "\n")
    md = report(chains, args, out, wall_s, setup, command)
    for i in range(len(METHODS)):
        Path(f"{args.partial}.{i}.json").unlink(missing_ok=True)
    print("\n".join(md))


if __name__ == "__main__":
    main()
