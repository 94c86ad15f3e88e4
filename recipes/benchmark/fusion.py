"""AdapterFusion on real data: fuse adapters trained on related tasks for a low-resource target (issue 12).

One command:

    python recipes/benchmark/fusion.py            # -> recipes/benchmark/results/fusion/{results.md,json,png}
    python recipes/benchmark/fusion.py --quick    # smoke test: 1 epoch of 2 batches per run, one seed

Target: Financial PhraseBank AllAgree sentiment with few labels — a seeded stratified subset of ``--train-rows``
(300) of `accuracy.py`'s FPB training split; validation = `accuracy.py`'s validation rows (picks the epoch and the
learning rate); test = `accuracy.py`'s FPB test split (the rows of the README's accuracy and continual tables).

Source adapters (Pfeiffer bottlenecks, trained once with a fixed seed, exported, frozen; cached under ``--cache``):

- ``fpb_lowagree``: FPB sentences_50agree MINUS every sentence in sentences_allagree (the same sentiment task, lower
  annotator agreement); no target sentence can leak (asserted by sentence text against the whole AllAgree set);
- ``banking77``: BANKING77 intents (banking domain, another task), a seeded subset of the training rows.

Methods on the target, each over ``--seeds`` with the same rows, epochs and batches: (a) a Pfeiffer adapter alone;
(b) AdapterFusion over both sources (+ a new head; the sources frozen); (c) full fine-tuning; (d) a Pfeiffer adapter
started from ``fpb_lowagree``'s weights (``init_from``; a new head). Each method's learning rate is chosen from its
grid by validation accuracy at the first seed (ties: the first listed); the other seeds use that value.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _report  # noqa: E402
import accuracy  # noqa: E402 — FPB/BANKING77 data modules, length bucketing, best-epoch weights
import continual  # noqa: E402 — the BANKING77 data module with a seeded training subset
import strategies  # noqa: E402 — the shared Pfeiffer configuration

BENCHMARK = "fusion"
TASK = "Financial PhraseBank AllAgree (low-resource)"
ADAPTER, FUSION, FULL, TRANSFER = ("Pfeiffer adapter alone", "AdapterFusion [fpb_lowagree, banking77]",
                                   "full fine-tuning", "Pfeiffer adapter init_from fpb_lowagree")
METHODS = [ADAPTER, FUSION, FULL, TRANSFER]
SOURCES = ["fpb_lowagree", "banking77"]
GRID_FLAGS = {ADAPTER: "adapter_lr", FUSION: "fusion_lr", FULL: "full_lr", TRANSFER: "transfer_lr"}


# ---- data ---------------------------------------------------------------------------------------------------------
def data_args(args: argparse.Namespace, seed: int) -> argparse.Namespace:
    return argparse.Namespace(data_root=args.data_root, split_seed=args.split_seed, max_length=args.max_length,
                              batch_size=args.batch_size, eval_batch_size=args.eval_batch_size, seed=seed,
                              banking77_train=args.banking77_train, subset_seed=args.subset_seed)


def stratified_rows(labels: list[int], n: int, seed: int) -> list[int]:
    """A seeded subset of ``n`` row indices keeping each label's share (largest remainders), in file order."""
    rng = np.random.default_rng(seed)
    by_label = {label: [i for i, y in enumerate(labels) if y == label] for label in sorted(set(labels))}
    exact = {label: n * len(rows) / len(labels) for label, rows in by_label.items()}
    take = {label: int(share) for label, share in exact.items()}
    for label in sorted(exact, key=lambda k: exact[k] - take[k], reverse=True)[:n - sum(take.values())]:
        take[label] += 1
    return sorted(i for label, rows in by_label.items() for i in rng.permutation(rows)[:take[label]].tolist())


def target_data(args: argparse.Namespace, seed: int) -> accuracy.LengthBucketed:
    """`accuracy.py`'s FPB AllAgree splits, the training split cut to a stratified ``--train-rows``."""
    inner = accuracy.make_datamodule("fpb", args.data_root, data_args(args, seed))
    train = inner.splits["train"]
    if args.train_rows and args.train_rows < len(train[0]):
        rows = stratified_rows(train[1], args.train_rows, args.subset_seed)
        inner.splits["train"] = tuple([column[i] for i in rows] for column in train)
    return accuracy.LengthBucketed(inner, seed)


def lowagree_data(args: argparse.Namespace) -> accuracy.LengthBucketed:
    """FPB sentences_50agree minus every AllAgree sentence: seeded stratified train/validation/test (80/10/10 of
    50agree, carved before the AllAgree rows are removed), so no target sentence is in any of its splits."""
    from lightning_adapters.tasks.finance_sentiment import FinanceSentimentDataModule

    inner = FinanceSentimentDataModule(data_dir=str(args.data_root / "financial_phrasebank"), agreement="50agree",
                                       test_fraction=0.1, validation_fraction=0.1, tokenizer="minilm",
                                       seed=args.split_seed, max_length=args.max_length, batch_size=args.batch_size,
                                       eval_batch_size=args.eval_batch_size)
    allagree = FinanceSentimentDataModule(data_dir=str(args.data_root / "financial_phrasebank"),
                                          agreement="allagree", test_fraction=0.0, validation_fraction=0.0)
    target = {text.strip() for split in allagree.splits.values() for text in split[0]}
    for name, split in inner.splits.items():
        keep = [i for i, text in enumerate(split[0]) if text.strip() not in target]
        inner.splits[name] = tuple([column[i] for i in keep] for column in split)
        assert not {t.strip() for t in inner.splits[name][0]} & target, "an AllAgree sentence leaked"
    return accuracy.LengthBucketed(inner, args.source_seed)


def check_no_leak(source: accuracy.LengthBucketed, target: accuracy.LengthBucketed) -> int:
    """Assert that no source sentence is a target test sentence; return the target test rows checked."""
    test = {text.strip() for text in target.inner.splits["test"][0]}
    for split in source.inner.splits.values():
        overlap = test & {text.strip() for text in split[0]}
        assert not overlap, f"{len(overlap)} target test sentences in fpb_lowagree, e.g. {next(iter(overlap))}"
    return len(test)


# ---- models -------------------------------------------------------------------------------------------------------
def head():
    from lightning_adapters.heads import ClassificationHead

    return ClassificationHead(pooling="mean", dropout=0.1)


def pfeiffer(args: argparse.Namespace):
    return strategies.ours("bottleneck pfeiffer (ours)", reduction_factor=args.reduction_factor)


def build(method: str, lr: float, labels: list[str], folders: dict[str, Path], args: argparse.Namespace):
    from lightning_adapters import AdapterFusion, AdapterModule
    from lightning_adapters.strategies import FullFineTuning

    common = dict(head=head(), label_names=labels, learning_rate=lr, weight_decay=0.01, warmup_ratio=0.1)
    if method == FULL:
        return AdapterModule("minilm", strategy=FullFineTuning(), **common)
    if method == FUSION:
        return AdapterModule("minilm", strategy=AdapterFusion(SOURCES, temperature=args.temperature),
                             adapters={name: str(folders[name]) for name in SOURCES}, **common)
    if method == TRANSFER:
        return AdapterModule("minilm", strategy=pfeiffer(args), adapters={SOURCES[0]: str(folders[SOURCES[0]])},
                             init_from=SOURCES[0], **common)
    return AdapterModule("minilm", strategy=pfeiffer(args), **common)


def limits(args: argparse.Namespace) -> dict[str, int]:
    return dict(limit_train_batches=2, limit_val_batches=2, limit_test_batches=2) if args.quick else {}


def fit_and_test(module: L.LightningModule, data, epochs: int, args: argparse.Namespace,
                 before_test=None) -> tuple[accuracy.BestOnValidation, dict[str, float]]:
    best = accuracy.BestOnValidation()
    trainer = L.Trainer(max_epochs=epochs, accelerator="auto", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=[best], **limits(args))
    trainer.fit(module, datamodule=data)
    best.restore(module)
    if before_test is not None:
        before_test()
    scores = trainer.test(module, datamodule=data, verbose=False)[0]
    return best, {k.removeprefix("test_"): float(v) for k, v in scores.items()}


# ---- source adapters (trained once, cached) -----------------------------------------------------------------------
def source_settings(name: str, args: argparse.Namespace) -> dict[str, Any]:
    return {"name": name, "variant": "pfeiffer", "reduction_factor": args.reduction_factor, "lr": args.source_lr,
            "epochs": args.source_epochs, "seed": args.source_seed, "split_seed": args.split_seed,
            "subset_seed": args.subset_seed, "max_length": args.max_length, "batch_size": args.batch_size,
            "banking77_train": args.banking77_train if name == "banking77" else None, "quick": args.quick}


def source_adapters(args: argparse.Namespace, cache: Path) -> tuple[dict[str, Path], dict[str, dict[str, Any]]]:
    """Train (or reuse from ``cache``) each source adapter; its exported folder and what was measured."""
    from lightning_adapters import AdapterModule

    folders, infos = {}, {}
    for name in SOURCES:
        folder, meta = cache / name, cache / f"{name}.json"
        settings = source_settings(name, args)
        if meta.is_file() and folder.is_dir() and json.loads(meta.read_text())["settings"] == settings:
            folders[name], infos[name] = folder, json.loads(meta.read_text()) | {"cached": True}
            print(f"source {name}: reused {folder}", flush=True)
            continue
        L.seed_everything(args.source_seed, workers=True, verbose=False)
        start, cpu = time.perf_counter(), time.process_time()
        if name == "fpb_lowagree":
            data = lowagree_data(args)
        else:
            data = continual.make_data(continual.TASKS[1], data_args(args, args.source_seed))
        module = AdapterModule("minilm", strategy=pfeiffer(args), head=head(), label_names=data.label_names,
                               learning_rate=args.source_lr, weight_decay=0.01, warmup_ratio=0.1)
        best, scores = fit_and_test(module, data, args.source_epochs, args)
        module.save_adapter(str(folder))
        info = {"settings": settings, "rows": {k: len(v[0]) for k, v in data.inner.splits.items()},
                "val_accuracy": best.best, "best_epoch": best.best_epoch, "test_accuracy": scores["accuracy"],
                "test_macro_f1": scores["macro_f1"], "trainable": module.parameter_counts()[0],
                "train_wall_s": time.perf_counter() - start, "train_cpu_s": time.process_time() - cpu}
        meta.write_text(json.dumps(info, indent=1) + "\n")
        folders[name], infos[name] = folder, info | {"cached": False}
        print(f"source {name}: val acc {100 * best.best:.2f}, own test acc {100 * scores['accuracy']:.2f}, "
              f"{info['train_cpu_s']:.0f} CPU s", flush=True)
    return folders, infos


# ---- target runs --------------------------------------------------------------------------------------------------
@dataclass
class Run:
    method: str
    lr: float
    seed: int
    best_epoch: int
    val_accuracy: float
    test_accuracy: float
    test_macro_f1: float
    trainable: int
    base: int
    wall_s: float
    cpu_s: float
    history: list[dict[str, Any]] = field(default_factory=list)
    fusion_weights: dict[str, float] = field(default_factory=dict)


def attention_recorder(module: L.LightningModule) -> tuple[list[torch.Tensor], list[Any]]:
    """Forward hooks on every fusion layer that record its mean softmax weight per source adapter (all positions of
    the batch, padding included); returns (recorded rows, hook handles)."""
    from lightning_adapters.strategies.fusion import FusionLayer

    rows, handles = [], []

    def hook(layer, inputs, _output):
        with torch.no_grad():
            hidden = layer.base_layer(inputs[0]).to(layer.query.weight.dtype)
            outputs = torch.stack([hidden + f.adapter(hidden).to(hidden.dtype) for f in layer.fused], dim=-2)
            scores = (layer.query(hidden).unsqueeze(-2) * layer.key(outputs)).sum(-1) / layer.temperature
            rows.append(scores.softmax(-1).reshape(-1, len(layer.fused)).mean(0))

    for layer in module.backbone.modules():
        if isinstance(layer, FusionLayer):
            handles.append(layer.register_forward_hook(hook))
    return rows, handles


def run_one(method: str, lr: float, seed: int, folders: dict[str, Path], args: argparse.Namespace) -> Run:
    from lightning_adapters.strategies import adapter_named_parameters

    L.seed_everything(seed, workers=True, verbose=False)
    start, cpu = time.perf_counter(), time.process_time()
    data = target_data(args, seed)
    module = build(method, lr, data.label_names, folders, args)
    trainable = module.parameter_counts()[0]
    base = sum(p.numel() for p in module.backbone.parameters()) - sum(
        p.numel() for _, p in adapter_named_parameters(module.backbone))
    recorded, handles = [], []

    def record_attention() -> None:  # the test pass only
        if method == FUSION:
            got, hooks = attention_recorder(module)
            recorded.append(got)
            handles.extend(hooks)

    best, scores = fit_and_test(module, data, args.epochs, args, before_test=record_attention)
    for handle in handles:
        handle.remove()
    weights = {}
    if recorded and recorded[0]:
        mean = torch.stack(recorded[0]).mean(0)
        weights = {name: float(w) for name, w in zip(SOURCES, mean, strict=True)}
    run = Run(method, lr, seed, best.best_epoch, best.best, scores["accuracy"], scores["macro_f1"], trainable, base,
              time.perf_counter() - start, time.process_time() - cpu, best.history, weights)
    print(f"{method} lr {lr:g} seed {seed}: test acc {100 * run.test_accuracy:.2f}, macro-F1 "
          f"{100 * run.test_macro_f1:.2f} (best epoch {run.best_epoch}/{args.epochs}, val acc "
          f"{100 * run.val_accuracy:.2f}), {run.cpu_s:.0f} CPU s"
          + (f", fusion attention {weights}" if weights else ""), flush=True)
    return run


def choose(runs: list[Run], method: str, seed: int) -> float:
    """The learning rate of ``method``'s grid run at ``seed`` with the best validation accuracy (ties: the first)."""
    tried = [r for r in runs if r.method == method and r.seed == seed]
    return max(tried, key=lambda r: (r.val_accuracy, -tried.index(r))).lr


def run_all(folders: dict[str, Path], args: argparse.Namespace, out: Path,
            done: Callable[[list[Run], dict[str, float]], None]) -> tuple[list[Run], dict[str, float]]:
    """Per method: its grid at the first seed, the learning rate with the best validation accuracy (ties: the first
    listed), then the other seeds at that rate; ``done`` (the report) after each method. Returns every run and each
    method's chosen rate."""
    runs, chosen = [], {}
    for method in args.methods:
        grid = getattr(args, GRID_FLAGS[method]) or [chosen.get(ADAPTER, args.adapter_lr[0])]
        runs += [run_one(method, lr, args.seeds[0], folders, args) for lr in grid]
        chosen[method] = choose(runs, method, args.seeds[0])
        runs += [run_one(method, chosen[method], seed, folders, args) for seed in args.seeds[1:]]
        (out / "runs.json").write_text(json.dumps([asdict(r) for r in runs], indent=1))  # for --from-runs
        done(runs, chosen)
    return runs, chosen


# ---- report -------------------------------------------------------------------------------------------------------
def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def setup_string(args: argparse.Namespace, n_test: int) -> str:
    grids = "; ".join(f"{m}: " + ("/".join(f"{lr:g}" for lr in getattr(args, GRID_FLAGS[m]))
                                  or "the adapter's chosen lr") for m in args.methods)
    return (f"MiniLM (all-MiniLM-L6-v2), mean pooling + dropout 0.1 + Linear; target FPB AllAgree: a seeded "
            f"stratified {args.train_rows} of accuracy.py's training split (subset seed {args.subset_seed}; split "
            f"seed {args.split_seed}), validation = accuracy.py's validation rows (epoch and lr pick), test = "
            f"accuracy.py's {n_test} test rows; {args.epochs} epochs for every method, length-bucketed batches of "
            f"{args.batch_size}, max_length {args.max_length}, AdamW wd 0.01, linear warm-up 10 % + decay, best "
            f"epoch by validation accuracy (in memory), tested once; training seeds {args.seeds}; lr grids ({grids}) "
            f"chosen by validation accuracy at seed {args.seeds[0]}; Pfeiffer bottlenecks reduction factor "
            f"{args.reduction_factor}; fusion temperature {args.temperature:g}; sources: Pfeiffer, lr "
            f"{args.source_lr:g}, {args.source_epochs} epochs, seed {args.source_seed}, fpb_lowagree = 50agree minus "
            f"AllAgree (80/10/10 carved from 50agree with split seed {args.split_seed}), banking77 = a seeded "
            f"{args.banking77_train:,} training rows; {_report.hardware()}; {_report.versions()}"
            f"{'; QUICK smoke run' if args.quick else ''}")


def report(runs: list[Run], chosen: dict[str, float], sources: dict[str, dict[str, Any]], setup: str,
           args: argparse.Namespace, out: Path, totals: dict[str, float], n_test: int) -> list[str]:
    records, rows = [], []

    def rec(method: str, metric: str, value: float | int, unit: str) -> None:
        records.append(_report.record(BENCHMARK, TASK, method, metric,
                                      value if isinstance(value, int) else round(value, 6), unit, setup))

    final = {m: [r for r in runs if r.method == m and r.lr == chosen[m]] for m in args.methods}
    reference = {r.seed: r for r in final.get(ADAPTER, [])}
    for method, group in final.items():
        acc, f1 = mean_std([100 * r.test_accuracy for r in group]), mean_std([100 * r.test_macro_f1 for r in group])
        cpu, wall = statistics.fmean(r.cpu_s for r in group), statistics.fmean(r.wall_s for r in group)
        first = group[0]
        paired = [100 * (r.test_accuracy - reference[r.seed].test_accuracy) for r in group if r.seed in reference]
        delta = mean_std(paired) if paired and method != ADAPTER else None
        how = "grid " + "/".join(f"{lr:g}" for lr in getattr(args, GRID_FLAGS[method])) if getattr(
            args, GRID_FLAGS[method]) else "the adapter's choice"
        rows.append([method, f"{chosen[method]:g} ({how})", f"**{acc[0]:.2f} ± {acc[1]:.2f}**",
                     f"{f1[0]:.2f} ± {f1[1]:.2f}", " / ".join(f"{100 * r.test_accuracy:.2f}" for r in group),
                     f"{delta[0]:+.2f} ± {delta[1]:.2f}" if delta else "–",
                     f"{statistics.fmean(100 * r.val_accuracy for r in group):.2f}", f"{first.trainable:,}",
                     f"{100 * first.trainable / first.base:.2f}", f"{cpu:.0f}"])
        rec(method, "test_accuracy_mean", acc[0], "%")
        rec(method, "test_accuracy_std", acc[1], "%")
        rec(method, "test_macro_f1_mean", f1[0], "%")
        rec(method, "test_macro_f1_std", f1[1], "%")
        for r in group:
            rec(method, f"test_accuracy_seed_{r.seed}", 100 * r.test_accuracy, "%")
            rec(method, f"test_macro_f1_seed_{r.seed}", 100 * r.test_macro_f1, "%")
        if delta:
            rec(method, "test_accuracy_delta_vs_adapter_mean", delta[0], "pt")
            rec(method, "test_accuracy_delta_vs_adapter_std", delta[1], "pt")
        rec(method, "val_accuracy_mean", statistics.fmean(100 * r.val_accuracy for r in group), "%")
        rec(method, "learning_rate", chosen[method], "lr")
        rec(method, "trainable_params", first.trainable, "count")
        rec(method, "trainable_percent_of_base", 100 * first.trainable / first.base, "%")
        rec(method, "train_cpu_time_per_run", cpu, "s")
        rec(method, "train_wall_time_per_run", wall, "s")
    for name, info in sources.items():
        for metric in ("val_accuracy", "test_accuracy", "test_macro_f1"):
            rec(f"source {name}", f"own_{metric}", 100 * info[metric], "%")
        rec(f"source {name}", "train_cpu_time", info["train_cpu_s"], "s")
    for key, value in totals.items():
        rec("all", key, value, "s")
    _report.write_json(out, records)

    headers = ["method", "lr (how chosen)", "test acc % mean ± std", "test macro-F1 %", "test acc per seed",
               "Δ acc vs adapter alone (paired by seed)", "val acc % (mean)", "trainable params", "% of base",
               "CPU s per run"]
    md = [f"# AdapterFusion for a low-resource target: FPB AllAgree with {args.train_rows} training rows (MiniLM)",
          "", _report.markdown_table(headers, rows), "",
          f"Seeds {args.seeds} (training seed: head/adapter/fusion init, dropout, batch order; the same "
          f"{args.train_rows} rows for every seed). Test rows: {n_test} (one row = {100 / n_test:.2f} pt). "
          "Trainable: the method's own weights + its head; % of the base MiniLM's weights (adapters excluded). "
          "CPU s: data set-up + training + validation + test, per run, one thread.", ""]
    weights = [r for r in final.get(FUSION, []) if r.fusion_weights]
    if weights:
        md += ["Fusion attention on the test set (mean softmax weight per source over the 6 fusion places and all "
               "positions, padding included): " + "; ".join(
                   f"seed {r.seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in r.fusion_weights.items())
                   for r in weights), ""]
        for r in weights:
            for name, value in r.fusion_weights.items():
                rec(FUSION, f"fusion_attention_{name}_seed_{r.seed}", value, "weight")
        _report.write_json(out, records)
    md += ["Source adapters (Pfeiffer, trained once, frozen in every target run; own splits):", "",
           _report.markdown_table(["source", "rows train / val / test", "best epoch", "val acc %", "own test acc %",
                                   "own test macro-F1 %", "trainable", "CPU s", "this run"], [
               [name, " / ".join(f"{info['rows'].get(s, 0):,}" for s in ("train", "validation", "test")),
                f"{info['best_epoch']}/{info['settings']['epochs']}", f"{100 * info['val_accuracy']:.2f}",
                f"{100 * info['test_accuracy']:.2f}", f"{100 * info['test_macro_f1']:.2f}", f"{info['trainable']:,}",
                f"{info['train_cpu_s']:.0f}", "cached" if info["cached"] else "trained"]
               for name, info in sources.items()]), "",
           f"Leak check: no fpb_lowagree sentence (train, validation or test) is one of the {n_test} target test "
           "sentences, nor any AllAgree sentence (asserted by sentence text).", "",
           "Learning-rate grid (first seed; chosen by validation accuracy, ties: the first listed; test shown, never "
           "used to choose):", "",
           _report.markdown_table(["method", "lr", "seed", "best epoch", "val acc %", "test acc %", "chosen"], [
               [r.method, f"{r.lr:g}", r.seed, f"{r.best_epoch}/{args.epochs}", f"{100 * r.val_accuracy:.2f}",
                f"{100 * r.test_accuracy:.2f}", "✓" if r.lr == chosen[r.method] else ""]
               for r in runs if r.seed == args.seeds[0]]), "",
           "Time: " + ", ".join(f"{k.replace('_', ' ')} {v / 60:.1f} min" for k, v in totals.items()) + ".", "",
           f"Setup: {setup}", "", "Validation accuracy per epoch:"]
    md += [f"- {r.method} (lr {r.lr:g}, seed {r.seed}): " + ", ".join(
        f"{100 * h['val_accuracy']:.1f}" for h in r.history) for r in runs]
    md += ["", f"Command: `python recipes/benchmark/fusion.py {shlex.join(sys.argv[1:])}`", ""]
    (out / "results.md").write_text("\n".join(md))
    plot(final, out / "fusion.png")
    return md


def plot(final: dict[str, list[Run]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, (method, group) in enumerate(final.items()):
        accs = [100 * r.test_accuracy for r in group]
        ax.bar(i, statistics.fmean(accs), color="#9ecae1" if method != FUSION else "#fd8d3c")
        ax.scatter([i] * len(accs), accs, color="black", s=12, zorder=3)
        ax.text(i, max(accs) + 0.3, f"{statistics.fmean(accs):.2f}", ha="center", fontsize=8)
    low = min(100 * r.test_accuracy for group in final.values() for r in group)
    ax.set_ylim(max(0, low - 5), 100)
    ax.set_xticks(range(len(final)), [m.replace(" [", "\n[").replace(" init_from", "\ninit_from") for m in final],
                  fontsize=7)
    ax.set_ylabel("test accuracy (%), bars: mean, dots: seeds")
    ax.set_title("FPB AllAgree, low-resource target (MiniLM)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---- command line -------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", type=Path, default=accuracy.default_data_root(),
                   help="folder holding financial_phrasebank/ and banking77/ (default: $LIGHTNING_ADAPTERS_DATA or "
                        "shared/data beside the repository)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: results/fusion beside this file)")
    p.add_argument("--cache", type=Path, default=None,
                   help="folder of the exported source adapters, reused when their settings match (default: "
                        "OUT/sources)")
    p.add_argument("--quick", action="store_true", help="smoke test: 1 epoch of 2 batches per run, one seed")
    p.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS, metavar="METHOD",
                   help=f"any of {METHODS} (default: all)")
    p.add_argument("--train-rows", type=int, default=300, help="target training rows (stratified, seeded; 0: all)")
    p.add_argument("--epochs", type=int, default=8, help="target epochs, every method")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--adapter-lr", type=float, nargs="+", default=[1e-3, 3e-3])
    p.add_argument("--fusion-lr", type=float, nargs="+", default=[1e-4, 1e-3, 5e-3],
                   help="fusion (and head) learning rates (the paper used 5e-5 with BERT/RoBERTa)")
    p.add_argument("--full-lr", type=float, nargs="+", default=[3e-5, 1e-4])
    p.add_argument("--transfer-lr", type=float, nargs="*", default=[],
                   help="grid for the init_from adapter (default: none, the adapter's chosen lr)")
    p.add_argument("--temperature", type=float, default=1.0, help="fusion softmax temperature")
    p.add_argument("--reduction-factor", type=int, default=16, help="Pfeiffer bottleneck width = hidden // this")
    p.add_argument("--source-lr", type=float, default=3e-3, help="source adapters (accuracy.py's Pfeiffer choice)")
    p.add_argument("--source-epochs", type=int, default=2)
    p.add_argument("--source-seed", type=int, default=42)
    p.add_argument("--banking77-train", type=int, default=2000, help="seeded BANKING77 training subset (0: all)")
    p.add_argument("--subset-seed", type=int, default=0, help="seed of the target and BANKING77 training subsets")
    p.add_argument("--split-seed", type=int, default=42, help="accuracy.py's split seed")
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--eval-batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--from-runs", type=Path, default=None, metavar="RUNS_JSON",
                   help="train nothing: write the report again from a run's runs.json (the methods it finished; give "
                        "the run's other options again)")
    args = p.parse_args(argv)
    if args.quick:
        args.epochs = args.source_epochs = 1
        args.seeds = args.seeds[:1]
        args.batch_size, args.eval_batch_size, args.max_length = 8, 16, 32
        args.train_rows, args.banking77_train = min(args.train_rows, 40), 200
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    _report.setup_runtime(args.threads)
    missing = [d for d in ("financial_phrasebank", "banking77") if not (args.data_root / d).is_dir()]
    if missing:
        sys.exit(f"{', '.join(missing)} not found in {args.data_root} — pass --data-root or set "
                 "LIGHTNING_ADAPTERS_DATA")
    out = args.out or _report.default_out(BENCHMARK)
    cache = args.cache or out / "sources"
    out.mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    start, cpu = time.perf_counter(), time.process_time()
    n_test = check_no_leak(lowagree_data(args), target_data(args, args.seeds[0]))
    if args.from_runs is not None:  # a stopped run: report the methods it finished, train nothing
        runs = [Run(**r) for r in json.loads(args.from_runs.read_text())]
        args.methods = [m for m in args.methods if m in {r.method for r in runs}]
        chosen = {m: choose(runs, m, args.seeds[0]) for m in args.methods}
        sources = {name: json.loads((cache / f"{name}.json").read_text()) | {"cached": True} for name in SOURCES}
        totals = {"source_training_cpu_time": sum(i["train_cpu_s"] for i in sources.values()),
                  "target_cpu_time": sum(r.cpu_s for r in runs)}
        print("\n".join(report(runs, chosen, sources, setup_string(args, n_test), args, out, totals, n_test)))
        return
    folders, sources = source_adapters(args, cache)
    setup = setup_string(args, n_test)

    def write_report(runs: list[Run], chosen: dict[str, float]) -> list[str]:
        """results.md/json/png of the methods finished so far (after each method: a stopped run keeps them)."""
        totals = {"source_training_cpu_time": sum(i["train_cpu_s"] for i in sources.values()),  # cached: earlier
                  "target_cpu_time": sum(r.cpu_s for r in runs), "benchmark_cpu_time": time.process_time() - cpu,
                  "benchmark_wall_time": time.perf_counter() - start}
        methods = args.methods
        args.methods = [m for m in methods if m in chosen]
        try:
            return report(runs, chosen, sources, setup, args, out, totals, n_test)
        finally:
            args.methods = methods

    runs, chosen = run_all(folders, args, out, write_report)
    md = write_report(runs, chosen)
    print("\n".join(md))


if __name__ == "__main__":
    main()
