"""Test accuracy and macro-F1 of every strategy vs full fine-tuning on real data (MiniLM, Lightning Trainer).

One command:

    python recipes/benchmark/accuracy.py            # -> recipes/benchmark/results/accuracy/{results.md,json,png}
    python recipes/benchmark/accuracy.py --quick    # smoke test: 1 epoch of 2 batches of 8 per stage

Tasks: Financial PhraseBank AllAgree (seeded stratified 80/20 test split, validation carved from the 80 %) and
BANKING77 (official 3,080-row test split, validation carved from train), read from ``--data-root``.
Methods: full fine-tuning, Houlsby and Pfeiffer bottleneck adapters (the default set), LoRA, IA3, prompt and prefix
tuning (`--methods`; configurations in `strategies.py`), all as our `AdapterModule` (full fine-tuning: the same module
with the `FullFineTuning` strategy, the whole backbone trainable) under `lightning.Trainer`. Several learning rates
for one method (e.g. ``--lora-lr 1e-3 3e-3``) are a grid: each is trained, the one with the best validation accuracy
is reported (ties: the first listed) and every run is listed in a tuning table — test accuracy never chooses.

Budget rule, the same for every method of a task: a fixed number of epochs with linear warm-up (10 %) and decay;
validation after every epoch; the weights of the epoch with the best validation accuracy are kept in memory
(no checkpoint files: `AdapterModule.state_dict` keeps adapter + head weights only) and evaluated once on test.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import multiprocessing
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Sampler

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _report  # noqa: E402
import strategies  # noqa: E402

BENCHMARK = "accuracy"
BACKBONE = "minilm"
FULL, HOULSBY, PFEIFFER = "full fine-tuning", "bottleneck houlsby (ours)", "bottleneck pfeiffer (ours)"
METHODS = [FULL, HOULSBY, PFEIFFER]  # the default set
LR_FLAGS = {strategies.LORA: "lora_lr", strategies.IA3: "ia3_lr", strategies.PROMPT: "prompt_lr",
            strategies.PREFIX: "prefix_lr"}
ALL_METHODS = [*METHODS, *LR_FLAGS]
WITHIN_1PT = (strategies.LORA, strategies.PREFIX)  # issue 3: within 1.0 pt of full fine-tuning on FPB
TASKS = {"fpb": "Financial PhraseBank AllAgree", "banking77": "BANKING77"}


@dataclass
class MethodSpec:
    """Hyper-parameters of one method (the same for both tasks)."""

    lr: float
    reduction_factor: int | None = None  # bottleneck only
    options: dict = field(default_factory=dict)  # strategy arguments beyond the shared configuration


FULL_LR = {"fpb": 5e-5, "banking77": 1e-4}  # full FT: best validation accuracy (README.md)
# LoRA and prefix tuning: chosen on Financial PhraseBank validation accuracy; IA3 and prompt tuning: one common value
# each, not tuned (README.md lists the grids).
DEFAULT_LR = {strategies.LORA: 2e-3, strategies.IA3: 1e-2, strategies.PROMPT: 3e-2, strategies.PREFIX: 1e-3}


def default_specs(args: argparse.Namespace, task: str) -> dict[str, list[MethodSpec]]:
    """Every configuration to train per method, in --methods order (several: a grid chosen on validation)."""
    specs = {FULL: [MethodSpec(args.full_lr or FULL_LR[task])],
             HOULSBY: [MethodSpec(args.houlsby_lr, args.houlsby_reduction_factor)],
             PFEIFFER: [MethodSpec(args.pfeiffer_lr, args.pfeiffer_reduction_factor)]}
    specs |= {method: [MethodSpec(lr) for lr in getattr(args, flag)] for method, flag in LR_FLAGS.items()}
    for method, text in ((strategies.PROMPT, args.prompt_init_text), (strategies.PREFIX, args.prefix_init_text)):
        if text is not None:  # start from this text's embeddings (prompt) / keys and values (prefix)
            for spec in specs[method]:
                spec.options |= {"init_text": text, "tokenizer": BACKBONE}
    if args.prefix_plain:
        for spec in specs[strategies.PREFIX]:
            spec.options["reparameterize"] = False
    return {method: specs[method] for method in args.methods}


def default_data_root() -> Path:
    env = os.environ.get("LIGHTNING_ADAPTERS_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[3] / "shared" / "data"


def make_datamodule(task: str, root: Path, args: argparse.Namespace):
    common = dict(tokenizer="minilm", seed=args.split_seed, max_length=args.max_length, batch_size=args.batch_size,
                  eval_batch_size=args.eval_batch_size)
    if task == "fpb":
        from lightning_adapters.tasks.finance_sentiment import FinanceSentimentDataModule

        return FinanceSentimentDataModule(data_dir=str(root / "financial_phrasebank"), agreement="allagree",
                                          test_fraction=0.2, validation_fraction=0.1, **common)
    from lightning_adapters.tasks.customer_service import CustomerServiceDataModule

    return CustomerServiceDataModule(data_dir=str(root / "banking77"), validation_fraction=0.1, **common)


class LengthBuckets(Sampler[list[int]]):
    """Batches of similar length (less padding, ~2x faster on CPU): each epoch, shuffle the rows, sort every chunk of
    ``bucket`` batches by length, cut it into batches and shuffle the batches. Seeded; a new order every epoch."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int, bucket: int = 50) -> None:
        self.lengths, self.batch_size, self.seed, self.bucket, self.epoch = lengths, batch_size, seed, bucket, 0

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        self.epoch += 1
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        size, batches = self.batch_size * self.bucket, []
        for start in range(0, len(order), size):
            chunk = sorted(order[start:start + size], key=self.lengths.__getitem__)
            batches += [chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        return iter([batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()])

    def __len__(self) -> int:
        size = self.batch_size * self.bucket
        full, rest = divmod(len(self.lengths), size)
        return full * self.bucket + math.ceil(rest / self.batch_size)


class LengthBucketed(L.LightningDataModule):
    """Wraps a task DataModule: same rows, tokenizer and collate function, batches grouped by length
    (training: `LengthBuckets`; validation/test: sorted by length, which leaves the metrics unchanged)."""

    def __init__(self, inner: L.LightningDataModule, seed: int) -> None:
        super().__init__()
        self.inner, self.seed, self.label_names = inner, seed, inner.label_names

    def setup(self, stage: str) -> None:
        self.inner.setup(stage)

    @staticmethod
    def _lengths(loader: DataLoader) -> list[int]:
        return [len(item["input_ids"]) for item in loader.dataset]

    def train_dataloader(self) -> DataLoader:
        base = self.inner.train_dataloader()
        sampler = LengthBuckets(self._lengths(base), base.batch_size, self.seed)
        return DataLoader(base.dataset, batch_sampler=sampler, collate_fn=base.collate_fn)

    def _sorted(self, base: DataLoader) -> DataLoader:
        lengths = self._lengths(base)
        order = sorted(range(len(lengths)), key=lengths.__getitem__)
        batches = [order[i:i + base.batch_size] for i in range(0, len(order), base.batch_size)]
        return DataLoader(base.dataset, batch_sampler=batches, collate_fn=base.collate_fn)

    def val_dataloader(self) -> DataLoader:
        return self._sorted(self.inner.val_dataloader())

    def test_dataloader(self) -> DataLoader:
        return self._sorted(self.inner.test_dataloader())


def build_module(method: str, spec: MethodSpec, label_names: list[str]):
    from lightning_adapters import AdapterModule
    from lightning_adapters.heads import ClassificationHead
    from lightning_adapters.strategies import FullFineTuning

    if method == FULL:
        strategy = FullFineTuning()
    elif method in (HOULSBY, PFEIFFER):
        strategy = strategies.ours(method, reduction_factor=spec.reduction_factor)
    else:
        strategy = strategies.ours(method, **spec.options)
    module = AdapterModule(backbone=BACKBONE, strategy=strategy, head=ClassificationHead(pooling="mean", dropout=0.1),
                           label_names=label_names, learning_rate=spec.lr, weight_decay=0.01, warmup_ratio=0.1)
    return module


class BestOnValidation(L.Callback):
    """After each validation, keep an in-memory copy of the trainable weights if ``monitor`` improved (higher is
    better); ``history`` records the ``record`` metrics of every epoch (NaN when a metric is absent). ``scale``
    turns the monitored value into the percent that is printed (1 for metrics already in percent, e.g. SQuAD F1)."""

    def __init__(self, monitor: str = "val_accuracy", record: tuple[str, ...] = ("val_accuracy", "val_macro_f1"),
                 scale: float = 100.0):
        self.monitor, self.record, self.scale = monitor, record, scale
        self.best, self.best_epoch, self.state, self.history = -1.0, -1, None, []

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        epoch, metrics = trainer.current_epoch + 1, trainer.callback_metrics
        self.history.append({"epoch": epoch} | {k: float(metrics.get(k, float("nan"))) for k in self.record})
        value = float(metrics[self.monitor])
        print(f"  epoch {epoch}: {self.monitor} {self.scale * value:.2f}", flush=True)
        if value > self.best:
            self.best, self.best_epoch = value, epoch
            self.state = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}

    def restore(self, module: L.LightningModule) -> None:
        params = dict(module.named_parameters())
        with torch.no_grad():
            for name, value in self.state.items():
                params[name].copy_(value)


@dataclass
class Result:
    task: str
    method: str
    spec: MethodSpec
    epochs: int
    best_epoch: int
    val_accuracy: float
    test_accuracy: float
    test_macro_f1: float
    trainable: int
    total: int
    wall_s: float
    history: list[dict[str, Any]] = field(default_factory=list)


def run_one(task: str, method: str, spec: MethodSpec, epochs: int, args: argparse.Namespace) -> Result:
    from lightning_adapters.backbone import count_parameters

    L.seed_everything(args.seed, workers=True, verbose=False)
    start = time.perf_counter()
    datamodule = make_datamodule(task, args.data_root, args)
    if args.bucketing:
        datamodule = LengthBucketed(datamodule, args.seed)
    module = build_module(method, spec, datamodule.label_names)
    best = BestOnValidation()
    limits = dict(limit_train_batches=2, limit_val_batches=2, limit_test_batches=2) if args.quick else {}
    trainer = L.Trainer(max_epochs=epochs, accelerator="auto", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=[best], deterministic=False, **limits)
    trainer.fit(module, datamodule=datamodule)
    best.restore(module)
    test = trainer.test(module, datamodule=datamodule, verbose=False)[0]
    trainable, total = count_parameters(module)
    result = Result(task, method, spec, epochs, best.best_epoch, best.best, float(test["test_accuracy"]),
                    float(test["test_macro_f1"]), trainable, total, time.perf_counter() - start, best.history)
    print(f"[{TASKS[task]}] {method}: test acc {100 * result.test_accuracy:.2f}, macro-F1 "
          f"{100 * result.test_macro_f1:.2f} (best epoch {result.best_epoch}/{epochs}, val acc "
          f"{100 * result.val_accuracy:.2f}), trainable {100 * trainable / total:.3f} %, {result.wall_s:.0f} s",
          flush=True)
    return result


def setup_string(task: str, epochs: int, specs: dict[str, list[MethodSpec]], args: argparse.Namespace) -> str:
    hp = "; ".join(f"{m}: lr {'/'.join(f'{s.lr:g}' for s in grid)}" + (" (best on validation)" if len(grid) > 1 else "")
                   + (f", reduction_factor {grid[0].reduction_factor}" if grid[0].reduction_factor else "")
                   + "".join(f", {k} {v!r}" for k, v in grid[0].options.items() if k != "tokenizer")
                   for m, grid in specs.items())
    split = ("seeded stratified 80/20 test split, validation 10 % of the 80 %" if task == "fpb"
             else "official test split (3,080 rows), validation 10 % of train")
    batching = "length-bucketed batches" if args.bucketing else "shuffled batches"
    return (f"MiniLM, mean pooling + dropout 0.1 + Linear; {split}; split seed {args.split_seed}, training seed "
            f"{args.seed}; max_length {args.max_length}, "
            f"dynamic padding, {batching} of {args.batch_size}; AdamW wd 0.01, linear warm-up 10 % + decay; "
            f"{epochs} epochs for every method, best epoch by validation accuracy (in memory), tested once; {hp}; "
            f"{strategies.describe()}; {_report.hardware()}; {_report.versions()}"
            f"{'; QUICK smoke run' if args.quick else ''}")


def chosen(results: list[Result]) -> list[Result]:
    """Per task and method, the configuration with the best validation accuracy (ties: the first trained)."""
    best: dict[tuple[str, str], Result] = {}
    for r in results:
        if (r.task, r.method) not in best or r.val_accuracy > best[r.task, r.method].val_accuracy:
            best[r.task, r.method] = r
    return list(best.values())


def report(results: list[Result], setups: dict[str, str], args: argparse.Namespace, out: Path) -> None:
    records, rows, picked = [], [], chosen(results)
    for r in picked:
        task, pct = TASKS[r.task], 100 * r.trainable / r.total
        figures = {"test_accuracy": (100 * r.test_accuracy, "%"), "test_macro_f1": (100 * r.test_macro_f1, "%"),
                   "val_accuracy_best_epoch": (100 * r.val_accuracy, "%"), "best_epoch": (r.best_epoch, "epoch"),
                   "trainable_params": (r.trainable, "count"), "trainable_percent": (pct, "%"),
                   "learning_rate": (r.spec.lr, "lr"), "wall_time": (r.wall_s, "s")}
        records += [_report.record(BENCHMARK, task, r.method, k, v if isinstance(v, int) else round(v, 6), u,
                                   setups[r.task]) for k, (v, u) in figures.items()]
        rows.append([task, r.method, f"{r.spec.lr:g}", r.spec.reduction_factor or "–", f"{r.best_epoch}/{r.epochs}",
                     f"{100 * r.val_accuracy:.2f}", f"**{100 * r.test_accuracy:.2f}**", f"{100 * r.test_macro_f1:.2f}",
                     f"{r.trainable:,}", f"{pct:.3f}", f"{r.wall_s:.0f}"])
    _report.write_json(out, records)
    headers = ["task", "method", "lr", "reduction factor", "best epoch", "val acc %", "test acc %", "test macro-F1 %",
               "trainable params", "trainable %", "wall s"]
    reference = full_reference(results, args)
    md = ["# Accuracy per strategy vs full fine-tuning (MiniLM)", "", _report.markdown_table(headers, rows), "",
          "Acceptance:", *acceptance(picked, reference), ""]
    if len(picked) < len(results):
        md += ["Learning-rate grid (chosen by validation accuracy; test accuracy shown, never used to choose):", "",
               _report.markdown_table(["task", "method", "lr", "best epoch", "val acc %", "test acc %", "chosen"], [
                   [TASKS[r.task], r.method, f"{r.spec.lr:g}", f"{r.best_epoch}/{r.epochs}",
                    f"{100 * r.val_accuracy:.2f}", f"{100 * r.test_accuracy:.2f}", "✓" if r in picked else ""]
                   for r in results]), ""]
    md += ["Setup per task:", *[f"- {TASKS[t]}: {s}" for t, s in setups.items()], "", "Validation accuracy per epoch:"]
    md += [f"- {TASKS[r.task]} / {r.method} (lr {r.spec.lr:g}): " + ", ".join(
        f"{100 * h['val_accuracy']:.1f}" for h in r.history) for r in results]
    md += ["", f"Command: `python recipes/benchmark/accuracy.py {shlex.join(sys.argv[1:])}`", ""]
    (out / "results.md").write_text("\n".join(md))
    plot(picked, out / "accuracy.png", reference)
    print("\n".join(md))


def full_reference(results: list[Result], args: argparse.Namespace) -> dict[str, tuple[float, str]]:
    """Full fine-tuning test accuracy per task: from this run, else from ``--reference`` (an earlier results.json
    with the same split, seed and budget — full fine-tuning is the most expensive run)."""
    ref = {r.task: (100 * r.test_accuracy, "this run") for r in results if r.method == FULL}
    if args.reference is not None and args.reference.is_file():
        for rec in json.loads(args.reference.read_text()):
            task = next((t for t, name in TASKS.items() if name == rec["task"]), None)
            if rec["method"] == FULL and rec["metric"] == "test_accuracy" and task and task not in ref:
                ref[task] = (float(rec["value"]), f"{args.reference.parent.name}/{args.reference.name}")
    return ref


def acceptance(results: list[Result], reference: dict[str, tuple[float, str]]) -> list[str]:
    lines = []
    for task, margin in (("fpb", 0.5), ("banking77", 1.0)):
        if task not in reference:
            continue
        by = {r.method: r for r in results if r.task == task}
        full, source = reference[task]
        bars = [(m, margin, task == "fpb") for m in (HOULSBY, PFEIFFER)]
        bars += [(m, 1.0, False) for m in WITHIN_1PT] if task == "fpb" else []
        for method, allowed, two_percent in (bar for bar in bars if bar[0] in by):
            r, acc = by[method], 100 * by[method].test_accuracy
            pct = 100 * r.trainable / r.total
            lines.append(_report.check_line(
                f"{TASKS[task]}: {method} ≥ full FT − {allowed} pt" + (" with ≤ 2 % trainable" if two_percent else ""),
                acc >= full - allowed and (pct <= 2.0 or not two_percent),
                f"{acc:.2f} vs {full:.2f} ({source}; Δ {acc - full:+.2f} pt), trainable {pct:.3f} %"))
        for method in (m for m in (strategies.IA3, strategies.PROMPT) if m in by):
            acc = 100 * by[method].test_accuracy
            lines.append(f"- (no bar) {TASKS[task]}: {method} {acc:.2f} vs full FT {full:.2f} (Δ {acc - full:+.2f} pt)")
    return lines


def plot(results: list[Result], path: Path, reference: dict[str, tuple[float, str]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r.task for r in results))
    methods = list(dict.fromkeys(r.method for r in results))
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4.5), squeeze=False)
    colors = {FULL: "#7f7f7f", HOULSBY: "#1f77b4", PFEIFFER: "#2ca02c"}
    for ax, task in zip(axes[0], tasks, strict=False):
        by = {r.method: r for r in results if r.task == task}
        for i, m in enumerate(methods):
            if m not in by:
                continue
            acc = 100 * by[m].test_accuracy
            ax.bar(i, acc, color=colors.get(m, "#ff7f0e"))
            ax.text(i, acc, f"{acc:.1f}\n({100 * by[m].trainable / by[m].total:.3g} % params)", ha="center",
                    va="bottom", fontsize=8)
        if FULL not in by and task in reference:
            ax.axhline(reference[task][0], color="#7f7f7f", ls="--", lw=1,
                       label=f"full fine-tuning {reference[task][0]:.2f} ({reference[task][1]})")
            ax.legend(loc="lower right", fontsize=8)
        low = min(100 * r.test_accuracy for r in by.values())
        ax.set_ylim(max(0, low - 10), 100)
        ax.set_xticks(range(len(methods)), [m.replace(" (ours)", "\n(ours)") for m in methods], fontsize=8)
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(TASKS[task])
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", type=Path, default=default_data_root(),
                   help="folder holding financial_phrasebank/ and banking77/ (default: $LIGHTNING_ADAPTERS_DATA or "
                        "shared/data beside the repository)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: results/accuracy beside this file)")
    p.add_argument("--quick", action="store_true", help="smoke test: 1 epoch of 2 batches of 8 per stage")
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    p.add_argument("--methods", nargs="+", default=METHODS, choices=ALL_METHODS, metavar="METHOD",
                   help=f"any of {ALL_METHODS} (default: {METHODS})")
    p.add_argument("--fpb-epochs", type=int, default=6)
    p.add_argument("--banking77-epochs", type=int, default=4)
    # Defaults: chosen on validation accuracy only (README.md lists the configurations tried).
    p.add_argument("--full-lr", type=float, default=None,
                   help="full fine-tuning learning rate (default: 5e-5 on Financial PhraseBank, 1e-4 on BANKING77)")
    p.add_argument("--houlsby-lr", type=float, default=2e-3, help="Houlsby adapter (and head) learning rate")
    p.add_argument("--houlsby-reduction-factor", type=int, default=8, help="bottleneck width = hidden size // this")
    p.add_argument("--pfeiffer-lr", type=float, default=3e-3, help="Pfeiffer adapter (and head) learning rate")
    p.add_argument("--pfeiffer-reduction-factor", type=int, default=16, help="bottleneck width = hidden size // this")
    for method, flag in LR_FLAGS.items():
        p.add_argument(f"--{flag.replace('_', '-')}", type=float, nargs="+", default=[DEFAULT_LR[method]],
                       help=f"{method} (and head) learning rate; several = a grid chosen on validation accuracy")
    for method in ("prompt", "prefix"):
        p.add_argument(f"--{method}-init-text", default=None, metavar="TEXT",
                       help=f"initialise {method} tuning from this text (default: random)")
    p.add_argument("--prefix-plain", action="store_true",
                   help="prefix tuning without the reparameterisation MLP (plain trainable prefixes)")
    p.add_argument("--reference", type=Path, default=_report.default_out(BENCHMARK) / "results.json",
                   help="earlier results.json whose full fine-tuning test accuracy the acceptance uses when this run "
                        "has no full fine-tuning (default: results/accuracy/results.json)")
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--eval-batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=42, help="training seed: head/adapter init, dropout, batch order")
    p.add_argument("--split-seed", type=int, default=42, help="seed of the validation/test splits carved from train")
    p.add_argument("--no-bucketing", dest="bucketing", action="store_false",
                   help="plain shuffled batches instead of length-bucketed ones (about 2x slower on CPU)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads per run")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs trained at the same time, each in its own process with --threads threads (results are "
                        "the same as one after the other; wall times then include the sharing)")
    args = p.parse_args(argv)
    if args.quick:
        args.fpb_epochs = args.banking77_epochs = 1
        args.batch_size, args.eval_batch_size, args.max_length = 8, 16, 32
    return args


def _job(job: tuple) -> Result:
    _report.setup_runtime(job[-1].threads)  # a spawned worker starts with default threads
    return run_one(*job)


def run_all(jobs: list[tuple], workers: int, out: Path) -> list[Result]:
    """Every run, in order; ``workers`` > 1 runs them in that many processes (each seeds itself: same results)."""
    results: list[Result] = []
    if workers > 1:
        context = multiprocessing.get_context("spawn")  # no forked torch/tokenizer state
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
            return list(pool.map(_job, jobs))
    for job in jobs:
        results.append(run_one(*job))
        (out / "partial.json").write_text(json.dumps([r.__dict__ | {"spec": r.spec.__dict__} for r in results],
                                                     indent=1))
    return results


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    _report.setup_runtime(args.threads)
    if not args.data_root.is_dir():
        sys.exit(f"data root not found: {args.data_root} — pass --data-root or set LIGHTNING_ADAPTERS_DATA")
    out = args.out or _report.default_out(BENCHMARK)
    out.mkdir(parents=True, exist_ok=True)
    epochs = {"fpb": args.fpb_epochs, "banking77": args.banking77_epochs}
    setups, jobs = {}, []
    for task in args.tasks:
        specs = default_specs(args, task)
        setups[task] = setup_string(task, epochs[task], specs, args)
        jobs += [(task, method, spec, epochs[task], args) for method, grid in specs.items() for spec in grid]
    results = run_all(jobs, args.jobs, out)
    report(results, setups, args, out)
    (out / "partial.json").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
