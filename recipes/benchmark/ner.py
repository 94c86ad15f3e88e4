"""CoNLL-2003 entity F1 of bottleneck and LoRA adapters vs full fine-tuning (MiniLM, Lightning Trainer).

One command:

    python recipes/benchmark/ner.py --threads 1     # -> recipes/benchmark/results/ner/{results.md,results.json,ner.png}
    python recipes/benchmark/ner.py --quick         # smoke test: 1 epoch of 2 batches per stage

Data: the original CoNLL-2003 English files read by `Conll2003DataModule` (``eng.train`` for training, ``eng.testa``
to pick the epoch, ``eng.testb`` reported), optionally a seeded random subset of the training sentences
(``--train-sentences``; validation and test are always complete). Every method is our `AdapterModule` with the same
`TokenClassificationHead` (dropout 0.1 + Linear, label on the first sub-word, prediction read there); full
fine-tuning is the same module with the `FullFineTuning` strategy (the whole backbone trainable). Metric:
entity-level micro F1 (`EntityF1`, equal to seqeval's default mode / conlleval) on words; a word cut off by
``max_length`` counts as ``O``.

Budget rule: a fixed number of epochs (``--epochs``; adapters may get ``--adapter-epochs``, e.g. twice as many for the
same wall-clock budget, since an adapter step costs about half a full fine-tuning step), linear warm-up (10 %) and
decay; validation after every epoch; the weights of the epoch with the best validation F1 are kept in memory and
tested once. Wall time on a shared machine mostly measures the other jobs; CPU time (this process) is reported too.
``--baseline results.json`` takes the full fine-tuning figures from an earlier run with the same data settings
instead of training it again.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _report  # noqa: E402
from accuracy import BestOnValidation, LengthBucketed, default_data_root  # noqa: E402 — shared with accuracy.py

from lightning_adapters.strategies import FullFineTuning  # noqa: E402

BENCHMARK = "ner"
TASK = "CoNLL-2003 English NER (test = eng.testb)"
FULL, BOTTLENECK, LORA = "full fine-tuning", "bottleneck houlsby (ours)", "LoRA (ours)"
METHODS = [FULL, BOTTLENECK, LORA]


@dataclass
class Result:
    method: str
    lr: float
    epochs: int
    best_epoch: int
    val_f1: float
    test: dict[str, float]
    trainable: int
    total: int
    wall_s: float
    cpu_s: float
    history: list[dict[str, Any]] = field(default_factory=list)


def build_module(method: str, args: argparse.Namespace, label_names: list[str]):
    from lightning_adapters import AdapterModule, Bottleneck, Lora
    from lightning_adapters.heads.token_classification import TokenClassificationHead

    strategy = {FULL: FullFineTuning,
                BOTTLENECK: lambda: Bottleneck(variant="houlsby", reduction_factor=args.reduction),
                LORA: lambda: Lora(r=args.lora_r, alpha=2 * args.lora_r, target_modules=args.lora_targets)}[method]()
    module = AdapterModule(backbone="minilm", strategy=strategy, head=TokenClassificationHead(dropout=0.1),
                           label_names=label_names, learning_rate=learning_rate(method, args), weight_decay=0.01,
                           warmup_ratio=0.1)
    return module


def method_epochs(method: str, args: argparse.Namespace) -> int:
    return args.epochs if method == FULL else (args.adapter_epochs or args.epochs)


def learning_rate(method: str, args: argparse.Namespace) -> float:
    return {FULL: args.full_lr, BOTTLENECK: args.bottleneck_lr, LORA: args.lora_lr}[method]


def make_datamodule(args: argparse.Namespace):
    from lightning_adapters.tasks.conll2003 import Conll2003DataModule

    data = Conll2003DataModule(data_dir=str(args.data_root / "conll2003"), max_length=args.max_length,
                               batch_size=args.batch_size, eval_batch_size=args.eval_batch_size, seed=args.seed)
    if args.train_sentences and args.train_sentences < len(data.splits["train"]):
        keep = np.random.default_rng(args.subset_seed).permutation(len(data.splits["train"]))[:args.train_sentences]
        data.splits["train"] = [data.splits["train"][i] for i in sorted(keep.tolist())]
    return data


def run_one(method: str, args: argparse.Namespace) -> Result:
    from lightning_adapters.backbone import count_parameters

    L.seed_everything(args.seed, workers=True, verbose=False)
    start, cpu = time.perf_counter(), time.process_time()
    epochs = method_epochs(method, args)
    inner = make_datamodule(args)
    data = LengthBucketed(inner, args.seed)
    module = build_module(method, args, inner.label_names)
    best = BestOnValidation("val_f1", ("val_f1", "train_loss"))
    limits = dict(limit_train_batches=2, limit_val_batches=2, limit_test_batches=2) if args.quick else {}
    trainer = L.Trainer(max_epochs=epochs, accelerator="auto", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, callbacks=[best], **limits)
    trainer.fit(module, datamodule=data)
    best.restore(module)
    test = {k: float(v) for k, v in trainer.test(module, datamodule=data, verbose=False)[0].items()}
    trainable, total = count_parameters(module)
    result = Result(method, learning_rate(method, args), epochs, best.best_epoch, best.best, test, trainable,
                    total, time.perf_counter() - start, time.process_time() - cpu, best.history)
    print(f"{method}: test F1 {100 * test['test_f1']:.2f} (best epoch {result.best_epoch}/{epochs}, val F1 "
          f"{100 * best.best:.2f}), trainable {100 * trainable / total:.3f} %, {result.wall_s:.0f} s wall, "
          f"{result.cpu_s:.0f} s CPU", flush=True)
    return result


def subset_phrase(args: argparse.Namespace) -> str:
    n = args.train_sentences or 14041
    return (f"a seeded random {n:,} of the 14,041 eng.train sentences (subset seed {args.subset_seed})" if n < 14041
            else "all 14,041 eng.train sentences")


def setup_string(args: argparse.Namespace) -> str:
    subset = subset_phrase(args)
    return (f"MiniLM (all-MiniLM-L6-v2), TokenClassificationHead (dropout 0.1 + Linear, first sub-word); trained on "
            f"{subset}, epoch picked on eng.testa (3,250 sentences), tested on eng.testb (3,453 sentences); "
            f"epochs: full {args.epochs}, adapters {args.adapter_epochs or args.epochs}; "
            f"{data_settings(args)}, AdamW wd 0.01, linear warm-up 10 % + decay, seed {args.seed}; lr: full "
            f"{args.full_lr:g}, bottleneck {args.bottleneck_lr:g} (houlsby, reduction factor {args.reduction}), LoRA "
            f"{args.lora_lr:g} (r {args.lora_r}, alpha {2 * args.lora_r}, targets {args.lora_targets}); "
            f"{_report.hardware()}; {_report.versions()}{'; QUICK smoke run' if args.quick else ''}")


def data_settings(args: argparse.Namespace) -> str:
    return f"length-bucketed batches of {args.batch_size}, max_length {args.max_length}"


def load_baseline(path: Path, args: argparse.Namespace) -> tuple[Result, str]:
    """The full fine-tuning result of an earlier run, refused unless its data settings, seed and lr are these."""
    records = [r for r in json.loads(path.read_text()) if r["method"] == FULL]
    if not records:
        sys.exit(f"{path} has no '{FULL}' records")
    setup = records[0]["setup"]
    needed = [subset_phrase(args), data_settings(args), f"seed {args.seed}", f"lr: full {args.full_lr:g}"]
    epochs = (f"{args.epochs} epochs for every method", f"epochs: full {args.epochs},")
    if not all(part in setup for part in needed) or not any(e in setup for e in epochs):
        sys.exit(f"{path}: its full fine-tuning ran with other settings ({setup}) — run it again")
    value = {r["metric"]: r["value"] for r in records}
    test = {k: v / 100 for k, v in value.items() if k.startswith("test_f1_")}
    test.update(test_f1=value["test_entity_f1"] / 100, test_precision=value["test_precision"] / 100,
                test_recall=value["test_recall"] / 100)
    total = round(value["trainable_params"] * 100 / value["trainable_percent"])
    result = Result(FULL, args.full_lr, args.epochs, int(value["best_epoch"]), value["val_entity_f1_best_epoch"] / 100,
                    test, int(value["trainable_params"]), total, value["wall_time"], value.get("cpu_time", math.nan))
    return result, setup


def report(results: list[Result], setup: str, args: argparse.Namespace, out: Path) -> None:
    records, rows = [], []
    types = ["PER", "ORG", "LOC", "MISC"]
    for r in results:
        pct = 100 * r.trainable / r.total
        figures = {"test_entity_f1": (100 * r.test["test_f1"], "%"),
                   "test_precision": (100 * r.test["test_precision"], "%"),
                   "test_recall": (100 * r.test["test_recall"], "%"),
                   **{f"test_f1_{t}": (100 * r.test[f"test_f1_{t}"], "%") for t in types},
                   "val_entity_f1_best_epoch": (100 * r.val_f1, "%"), "best_epoch": (r.best_epoch, "epoch"),
                   "trainable_params": (r.trainable, "count"), "trainable_percent": (pct, "%"),
                   "wall_time": (r.wall_s, "s"), "cpu_time": (r.cpu_s, "s")}
        records += [_report.record(BENCHMARK, TASK, r.method, k, v if isinstance(v, int) else round(v, 4), u, setup)
                    for k, (v, u) in figures.items()]
        rows.append([r.method, f"{r.lr:g}", f"{r.best_epoch}/{r.epochs}", f"{100 * r.val_f1:.2f}",
                     f"**{100 * r.test['test_f1']:.2f}**", f"{100 * r.test['test_precision']:.2f}",
                     f"{100 * r.test['test_recall']:.2f}", *(f"{100 * r.test[f'test_f1_{t}']:.2f}" for t in types),
                     f"{r.trainable:,}", f"{pct:.3f}", f"{r.wall_s / 60:.1f}",
                     "not recorded" if math.isnan(r.cpu_s) else f"{r.cpu_s / 60:.1f}"])
    _report.write_json(out, records)
    headers = ["method", "lr", "best epoch", "val F1 %", "test F1 %", "test P %", "test R %",
               *(f"F1 {t} %" for t in types), "trainable params", "trainable %", "wall min", "CPU min"]
    md = ["# NER: adapters vs full fine-tuning on CoNLL-2003 (MiniLM)", "", _report.markdown_table(headers, rows), "",
          "Acceptance:", *acceptance(results), "", f"Setup: {setup}", "", "Validation entity F1 per epoch:"]
    md += [f"- {r.method}: " + ", ".join(f"{100 * h['val_f1']:.2f}" for h in r.history) for r in results]
    md += ["", f"Command: `python recipes/benchmark/ner.py {' '.join(sys.argv[1:])}`", ""]
    (out / "results.md").write_text("\n".join(md))
    plot(results, out / "ner.png")
    print("\n".join(md))


def acceptance(results: list[Result]) -> list[str]:
    by = {r.method: r for r in results}
    if FULL not in by:
        return []
    full = 100 * by[FULL].test["test_f1"]
    lines = []
    for method in (BOTTLENECK, LORA):
        if method in by:
            f1 = 100 * by[method].test["test_f1"]
            lines.append(_report.check_line(f"{method} test entity F1 ≥ full fine-tuning − 1.0 pt", f1 >= full - 1.0,
                                            f"{f1:.2f} vs {full:.2f} (Δ {f1 - full:+.2f} pt)"))
    return lines


def plot(results: list[Result], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for i, r in enumerate(results):
        f1 = 100 * r.test["test_f1"]
        ax.bar(i, f1, color=["#7f7f7f", "#1f77b4", "#2ca02c"][i % 3])
        ax.text(i, f1, f"{f1:.2f}\n({100 * r.trainable / r.total:.3g} % params)", ha="center", va="bottom", fontsize=8)
    low = min(100 * r.test["test_f1"] for r in results)
    ax.set_ylim(max(0, low - 10), 100)
    ax.set_xticks(range(len(results)), [r.method.replace(" (ours)", "\n(ours)") for r in results], fontsize=8)
    ax.set_ylabel("test entity F1 (%)")
    ax.set_title("CoNLL-2003 eng.testb, MiniLM")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", type=Path, default=default_data_root(),
                   help="folder holding conll2003/ (default: $LIGHTNING_ADAPTERS_DATA or shared/data)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: results/ner beside this file)")
    p.add_argument("--quick", action="store_true", help="smoke test: 1 epoch of 2 batches per stage")
    p.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS, metavar="METHOD")
    p.add_argument("--epochs", type=int, default=3, help="epochs of full fine-tuning (and of adapters by default)")
    p.add_argument("--adapter-epochs", type=int, default=0, help="epochs of the adapter methods (0: --epochs)")
    p.add_argument("--baseline", type=Path, default=None,
                   help="results.json of an earlier run: take full fine-tuning from it (same data settings)")
    p.add_argument("--train-sentences", type=int, default=0, help="random training subset size (0: all 14,041)")
    p.add_argument("--subset-seed", type=int, default=0)
    p.add_argument("--full-lr", type=float, default=1e-4)
    p.add_argument("--bottleneck-lr", type=float, default=2e-3)
    p.add_argument("--reduction", type=int, default=8, help="bottleneck width = hidden size // this")
    p.add_argument("--lora-lr", type=float, default=2e-3)
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--lora-targets", nargs="+", default=["query", "key", "value", "dense"],
                   help="LoRA target module suffixes")
    p.add_argument("--max-length", type=int, default=192)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--eval-batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if args.quick:
        args.epochs, args.adapter_epochs, args.batch_size, args.eval_batch_size = 1, 0, 8, 16
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    _report.setup_runtime(args.threads)
    if not (args.data_root / "conll2003").is_dir():
        sys.exit(f"{args.data_root / 'conll2003'} not found — pass --data-root or set LIGHTNING_ADAPTERS_DATA")
    out = args.out or _report.default_out(BENCHMARK)
    out.mkdir(parents=True, exist_ok=True)
    methods = [m for m in args.methods if args.baseline is None or m != FULL]
    results = []
    for method in methods:
        results.append(run_one(method, args))
        (out / "partial.json").write_text(json.dumps([r.__dict__ for r in results], indent=1))
    setup = setup_string(args)
    if args.baseline is not None:  # read at the end: the baseline run may still be finishing when this one starts
        baseline, baseline_setup = load_baseline(args.baseline, args)
        results.insert(0, baseline)
        setup += f"; {FULL} taken from {args.baseline} of an earlier run (its setup: {baseline_setup})"
    report(results, setup, args, out)
    (out / "partial.json").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
