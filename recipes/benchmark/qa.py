"""SQuAD v1.1 exact match / F1 of an adapter vs full fine-tuning of MiniLM at the same budget (Lightning Trainer).

One command (about 35 CPU-minutes at one thread per run; ~1 h wall with --jobs 2 on a busy 2-core machine):

    python recipes/benchmark/qa.py --jobs 2     # -> recipes/benchmark/results/qa/{results.md,results.json,qa.png}
    python recipes/benchmark/qa.py --reuse      # rebuild the report, training only runs not in runs.json yet
    python recipes/benchmark/qa.py --tune       # a validation-only sweep over --tune-grid (writes tuning.md)
    python recipes/benchmark/qa.py --quick      # smoke test: a few questions per split

Data: only the SQuAD v1.1 *dev* set is available offline (``squad_v1.1/dev-v1.1.json``, 48 articles, 10,570
questions), so it is split by article (seeded): 20 % of the articles for test, 10 % of the rest for validation, the
remainder for training; no paragraph is shared between splits. By default seeded subsets are used to fit the CPU
budget: 1,500 of the 7,710 training questions (~1.7 % of SQuAD's train size), 200 validation and 1,000 of the
2,227 test questions. Scores are therefore NOT comparable with official SQuAD dev-set numbers.

Budget rule, the same for every method: the same training questions and windows (``max_length``/``stride``),
batch size, number of epochs and linear warm-up (10 %) + decay; validation after every epoch, the weights of the
epoch with the best validation F1 kept in memory and tested once. Full fine-tuning (our `AdapterModule` with no
adapters and the whole backbone trainable) is run at several learning rates; the adapter is compared with the one
that has the best validation F1.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _report  # noqa: E402
from accuracy import BestOnValidation, default_data_root  # noqa: E402 — shared with accuracy.py and ner.py

BENCHMARK = "qa"
TASK = "SQuAD v1.1 (article split of dev)"
FULL, HOULSBY, LORA = "full fine-tuning", "bottleneck houlsby (ours)", "lora (ours)"
KINDS = {"full": FULL, "houlsby": HOULSBY, "lora": LORA}


def make_datamodule(args: argparse.Namespace):
    from lightning_adapters.tasks.squad import SquadDataModule

    dm = SquadDataModule(data_dir=str(args.data_root / "squad_v1.1"), tokenizer="minilm", seed=args.split_seed,
                         validation_fraction=0.1, test_fraction=0.2, max_length=args.max_length, stride=args.stride,
                         batch_size=args.batch_size, eval_batch_size=args.eval_batch_size)
    rng = np.random.default_rng(args.split_seed)
    for split, count in (("train", args.train_questions), ("validation", args.val_questions),
                         ("test", args.test_questions)):
        examples = dm.splits[split]
        if count and count < len(examples):  # a seeded subset of questions, kept in file order
            keep = set(rng.permutation(len(examples))[:count].tolist())
            dm.splits[split] = [e for i, e in enumerate(examples) if i in keep]
    return dm


def build_module(kind: str, lr: float):
    from lightning_adapters import AdapterModule, Bottleneck, Lora
    from lightning_adapters.heads.question_answering import QuestionAnsweringHead
    from lightning_adapters.strategies import FullFineTuning

    strategy = {"full": FullFineTuning, "houlsby": lambda: Bottleneck(variant="houlsby", reduction_factor=8),
                "lora": lambda: Lora(r=16, alpha=32, target_modules="all-linear")}[kind]()
    module = AdapterModule(backbone="minilm", strategy=strategy, head=QuestionAnsweringHead(max_answer_length=30),
                           learning_rate=lr, weight_decay=0.01, warmup_ratio=0.1)
    return module


def run_one(kind: str, lr: float, args: argparse.Namespace, test: bool = True) -> dict[str, Any]:
    """Train one method; returns its numbers (a plain dict: it may come back from a worker process)."""
    from lightning_adapters.backbone import count_parameters

    _report.setup_runtime(args.threads)
    L.seed_everything(args.seed, workers=True, verbose=False)
    start, cpu_start = time.perf_counter(), time.process_time()
    datamodule = make_datamodule(args)
    module = build_module(kind, lr)
    best = BestOnValidation("val_f1", ("val_exact_match", "val_f1"), scale=1)  # SQuAD scores are in percent
    trainer = L.Trainer(max_epochs=args.epochs, accelerator="auto", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, callbacks=[best])
    trainer.fit(module, datamodule=datamodule)
    train_s = time.perf_counter() - start
    best.restore(module)
    scores = trainer.test(module, datamodule=datamodule, verbose=False)[0] if test else {}
    trainable, total = count_parameters(module)
    result = {"kind": kind, "method": KINDS[kind], "lr": lr, "best_epoch": best.best_epoch, "val_f1": best.best,
              "val_exact_match": max(h["val_exact_match"] for h in best.history if h["epoch"] == best.best_epoch),
              "test_exact_match": float(scores.get("test_exact_match", float("nan"))),
              "test_f1": float(scores.get("test_f1", float("nan"))), "trainable": trainable, "total": total,
              "steps": int(trainer.global_step), "train_s": train_s, "wall_s": time.perf_counter() - start,
              "cpu_s": time.process_time() - cpu_start,
              "history": best.history,
              "sizes": {s: [len(e), len({x.article for x in e})] for s, e in datamodule.splits.items()},
              "train_windows": len(datamodule._datasets["train"]), "budget": budget(args)}
    print(f"{result['method']} lr {lr:g}: test EM {result['test_exact_match']:.2f} F1 {result['test_f1']:.2f}, val F1 "
          f"{result['val_f1']:.2f} (epoch {result['best_epoch']}), {result['steps']} steps, {result['wall_s']:.0f} s",
          flush=True)
    return result


def budget(args: argparse.Namespace) -> dict[str, Any]:
    """Everything that must match for two runs to be comparable (and for --reuse to take an earlier run)."""
    keys = ("train_questions", "val_questions", "test_questions", "epochs", "max_length", "stride", "batch_size",
            "seed", "split_seed")
    return {k: getattr(args, k) for k in keys} | {"quick": args.quick}


def run_all(specs: list[tuple[str, float]], args: argparse.Namespace, test: bool) -> list[dict[str, Any]]:
    if args.jobs <= 1:
        return [run_one(kind, lr, args, test) for kind, lr in specs]
    with ProcessPoolExecutor(args.jobs) as pool:  # one thread each: --jobs 2 keeps two cores busy
        futures = [pool.submit(run_one, kind, lr, args, test) for kind, lr in specs]
        return [f.result() for f in futures]


def setup_string(results: list[dict[str, Any]], args: argparse.Namespace, cpu_s: float) -> str:
    sizes, windows = results[0]["sizes"], results[0]["train_windows"]
    split = ", ".join(f"{s} {q:,} questions / {a} articles" for s, (q, a) in sizes.items())
    hp = "; ".join(f"{r['method']}: lr {r['lr']:g}" for r in results)
    return (f"MiniLM (all-MiniLM-L6-v2) + start/end Linear head; article-disjoint split of SQuAD v1.1 dev (split seed "
            f"{args.split_seed}): {split} ({windows:,} training windows); max_length {args.max_length}, stride "
            f"{args.stride}, batch {args.batch_size} windows, {args.epochs} epoch(s), AdamW wd 0.01, linear warm-up "
            f"10 % + decay, best epoch by validation F1, tested once; max_answer_length 30; houlsby reduction factor 8;"
            f" LoRA r 16, alpha 32, all linear layers; {hp}; training seed {args.seed}; {cpu_s / 60:.1f} CPU-minutes "
            f"over all runs (process CPU time; wall time per run in the table, runs {args.jobs} at a time on a shared "
            f"machine); {_report.hardware()}; {_report.versions()}"
            f"{'; QUICK smoke run' if args.quick else ''}")


def report(results: list[dict[str, Any]], setup: str, args: argparse.Namespace, out: Path) -> None:
    records, rows = [], []
    for r in results:
        pct = 100 * r["trainable"] / r["total"]
        figures = {"test_exact_match": (r["test_exact_match"], "%"), "test_f1": (r["test_f1"], "%"),
                   "val_f1_best_epoch": (r["val_f1"], "%"), "trainable_params": (r["trainable"], "count"),
                   "trainable_percent": (pct, "%"), "train_steps": (r["steps"], "count"),
                   "wall_time": (r["wall_s"], "s"), "cpu_time": (r["cpu_s"], "s")}
        records += [_report.record(BENCHMARK, TASK, r["method"], k, v if isinstance(v, int) else round(v, 4), u, setup)
                    for k, (v, u) in figures.items()]
        rows.append([r["method"], f"{r['lr']:g}", f"{r['best_epoch']}/{args.epochs}", r["steps"],
                     f"{r['val_exact_match']:.2f} / {r['val_f1']:.2f}", f"**{r['test_exact_match']:.2f}**",
                     f"**{r['test_f1']:.2f}**", f"{r['trainable']:,}", f"{pct:.3f}", f"{r['cpu_s']:.0f}",
                     f"{r['wall_s']:.0f}"])
    _report.write_json(out, records)
    headers = ["method", "lr", "best epoch", "steps", "val EM / F1", "test EM", "test F1", "trainable params",
               "trainable %", "CPU s", "wall s"]
    md = ["# Extractive QA: adapter vs full fine-tuning (MiniLM, SQuAD v1.1 article split)", "",
          _report.markdown_table(headers, rows), "", "Acceptance:", *acceptance(results), "", f"Setup: {setup}", "",
          f"Command: `python recipes/benchmark/qa.py {' '.join(sys.argv[1:])}`", ""]
    (out / "results.md").write_text("\n".join(md))
    plot(results, out / "qa.png")
    print("\n".join(md))


def acceptance(results: list[dict[str, Any]], margin: float = 1.5) -> list[str]:
    def best(kind_is_full: bool) -> dict[str, Any] | None:  # the lr is chosen on validation, never on test
        runs = [r for r in results if (r["kind"] == "full") == kind_is_full]
        return max(runs, key=lambda r: r["val_f1"]) if runs else None

    full, lines = best(True), []
    for r in [best(False)]:
        if full is None or r is None:
            continue
        ok = r["test_exact_match"] >= full["test_exact_match"] - margin and r["test_f1"] >= full["test_f1"] - margin
        lines.append(_report.check_line(
            f"{r['method']} (lr {r['lr']:g}) EM and F1 ≥ full fine-tuning (lr {full['lr']:g}) − {margin} pt, each lr "
            "best on validation "
            "(same budget)", ok,
            f"EM {r['test_exact_match']:.2f} vs {full['test_exact_match']:.2f} (Δ "
            f"{r['test_exact_match'] - full['test_exact_match']:+.2f}), F1 {r['test_f1']:.2f} vs {full['test_f1']:.2f}"
            f" (Δ {r['test_f1'] - full['test_f1']:+.2f})"))
    return lines


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, r in enumerate(results):
        for j, (metric, color) in enumerate((("test_exact_match", "#1f77b4"), ("test_f1", "#2ca02c"))):
            ax.bar(i + 0.38 * j - 0.19, r[metric], width=0.36, color=color, label=metric if i == 0 else None)
            ax.text(i + 0.38 * j - 0.19, r[metric], f"{r[metric]:.1f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(results)), [f"{r['method']}\n({100 * r['trainable'] / r['total']:.2g} % params)"
                                        for r in results], fontsize=8)
    ax.set_ylabel("test score (%)")
    ax.set_title(TASK)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def tune(args: argparse.Namespace, out: Path) -> None:
    """Validation-only sweep on a smaller budget; writes tuning.md (the defaults below were picked from it)."""
    specs = [(kind, float(lr)) for kind, lr in (s.split(":") for s in args.tune_grid)]
    start = time.perf_counter()
    results = run_all(specs, args, test=False)
    rows = [[r["method"], f"{r['lr']:g}", r["steps"], f"{r['val_exact_match']:.2f}", f"{r['val_f1']:.2f}",
             f"{r['wall_s']:.0f}"] for r in results]
    md = ["# QA tuning sweep (validation only)", "",
          _report.markdown_table(["method", "lr", "steps", "val EM", "val F1", "wall s"], rows), "",
          f"Sizes: {results[0]['sizes']} ({results[0]['train_windows']} training windows); "
          f"{(time.perf_counter() - start) / 60:.1f} min wall with {args.jobs} job(s), "
          f"{sum(r['cpu_s'] for r in results) / 60:.1f} CPU-minutes.", "",
          f"Command: `python recipes/benchmark/qa.py {' '.join(sys.argv[1:])}`", ""]
    (out / "tuning.md").write_text("\n".join(md))
    print("\n".join(md))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", type=Path, default=default_data_root(),
                   help="folder holding squad_v1.1/dev-v1.1.json (default: $LIGHTNING_ADAPTERS_DATA or shared/data)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: results/qa beside this file)")
    p.add_argument("--quick", action="store_true", help="smoke test: a few questions per split, short windows")
    p.add_argument("--tune", action="store_true", help="run the validation-only sweep (--tune-grid) instead")
    p.add_argument("--tune-grid", nargs="+", default=["full:1e-4", "full:3e-4", "houlsby:2e-3", "lora:1e-3"],
                   metavar="KIND:LR")
    p.add_argument("--adapter", choices=["houlsby", "lora"], default="houlsby", help="the adapter compared")
    p.add_argument("--adapter-lr", type=float, nargs="+", default=[1.5e-3, 3e-3, 6e-3],
                   help="adapter learning rate(s); the one with the best validation F1 is compared")
    p.add_argument("--full-lr", type=float, nargs="+", default=[1e-4, 3e-4, 6e-4],
                   help="full fine-tuning learning rate(s); the one with the best validation F1 is compared")
    p.add_argument("--reuse", action="store_true",
                   help="take runs of the same method, lr and budget from an earlier runs.json in the output folder")
    p.add_argument("--train-questions", type=int, default=1500, help="seeded subset of training questions (0: all)")
    p.add_argument("--val-questions", type=int, default=200, help="seeded subset of validation questions (0: all)")
    p.add_argument("--test-questions", type=int, default=1000, help="seeded subset of test questions (0: all)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--stride", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--eval-batch-size", type=int, default=32, help="questions per evaluation batch")
    p.add_argument("--seed", type=int, default=42, help="training seed: head/adapter init, dropout, batch order")
    p.add_argument("--split-seed", type=int, default=42, help="seed of the article split and the question subsets")
    p.add_argument("--threads", type=int, default=1, help="torch threads per job")
    p.add_argument("--jobs", type=int, default=1, help="methods trained in parallel processes")
    args = p.parse_args(argv)
    if args.quick:
        args.train_questions, args.val_questions, args.test_questions = 24, 8, 8
        args.max_length, args.stride, args.batch_size, args.eval_batch_size = 96, 32, 8, 8
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    _report.setup_runtime(args.threads)
    if not (args.data_root / "squad_v1.1").is_dir():
        sys.exit(f"squad_v1.1 not found under {args.data_root} — pass --data-root or set LIGHTNING_ADAPTERS_DATA")
    out = args.out or _report.default_out(BENCHMARK)
    out.mkdir(parents=True, exist_ok=True)
    if args.tune:
        tune(args, out)
        return
    specs = [("full", lr) for lr in args.full_lr] + [(args.adapter, lr) for lr in args.adapter_lr]
    earlier = json.loads((out / "runs.json").read_text()) if args.reuse and (out / "runs.json").is_file() else []
    reused = {(r["kind"], r["lr"]): r for r in earlier if r.get("budget") == budget(args)}
    fresh = run_all([s for s in specs if s not in reused], args, test=True)
    results = [reused.get(s) or next(r for r in fresh if (r["kind"], r["lr"]) == s) for s in specs]
    cpu_s = sum(r["cpu_s"] for r in results)
    setup = setup_string(results, args, cpu_s)
    (out / "runs.json").write_text(json.dumps(results, indent=1) + "\n")
    report(results, setup, args, out)


if __name__ == "__main__":
    main()
