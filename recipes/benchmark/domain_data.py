"""Domain adapters, data selection and augmentation for a low-resource target (issue 14, parts 3-5).

One command:

    python recipes/benchmark/domain_data.py          # -> recipes/benchmark/results/domain_data/{results.md,json}
    python recipes/benchmark/domain_data.py --quick  # smoke test: tiny corpora, 1 epoch of 2 batches, one seed

Target: `fusion.py`'s low-resource Financial PhraseBank AllAgree — the same stratified ``--train-rows`` (300) of
`accuracy.py`'s training split, its validation rows (best epoch) and its 453 test rows; batches grouped by length by
the DataModule (``group_by_length``), not by `accuracy.py`'s wrapper, so "adapter alone" is not bit-equal to
`fusion.py`'s. Every method trains a Pfeiffer
adapter (`fusion.py`'s settings, the learning rate that table chose for it) on those rows for the same epochs and
seeds; they differ in where the adapter starts and in what the training rows look like:

1. **adapter alone**: from scratch (`fusion.py`'s "Pfeiffer adapter alone").
2. **+ domain adapter**: ``init_from`` a Pfeiffer *domain* adapter trained with masked LM
   (`LanguageModelingHead` + `TextCorpusDataModule`) on ``--domain-texts`` sentences drawn at random from ECTSum's
   earnings-call transcripts (finance text from the shared data; no FPB sentence in it, asserted).
3. **+ selected data**: the same, but the domain adapter's sentences are *selected*: the nearest neighbours of the
   300 labelled texts (`lightning_adapters.selection`, frozen MiniLM mean-pooled embeddings) in a pool of ECTSum
   sentences plus out-of-domain text (BANKING77 and Bitext customer-service requests, DialogSum dialogue turns).
4. **+ augmentation**: 3, with token-edit augmentation of the 300 training rows (`Augmentation`: one edited copy of
   every row per epoch, drawn again each epoch — twice the steps; seeded, training split only).

Reported: test accuracy and macro-F1 over the seeds (mean ± std), and each method's gain over the adapter alone,
paired by seed; the domain adapters' own held-out MLM perplexity before and after training; the selection's make-up.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _report  # noqa: E402
import accuracy  # noqa: E402 — data root
import fusion  # noqa: E402 — the low-resource target, the Pfeiffer settings, fit-and-test

BENCHMARK = "domain_data"
TASK = "Financial PhraseBank AllAgree (low-resource)"
ALONE, DOMAIN, SELECTED, AUGMENTED = ("adapter alone", "+ domain adapter (random ECTSum sentences)",
                                      "+ domain adapter (selected sentences)", "+ selected + augmentation")
METHODS = [ALONE, DOMAIN, SELECTED, AUGMENTED]


# ---- corpora ------------------------------------------------------------------------------------------------------
def ectsum_sentences(root: Path, min_words: int) -> list[str]:
    """Every transcript sentence (one per line) of ECTSum's val and test files with at least ``min_words`` words, in
    file order, read as the ``finance_text`` pack reads them (`TextCorpusDataModule` with ``lines``)."""
    from lightning_adapters import TextCorpusDataModule

    texts = []
    for name in ("ectsum_val.jsonl", "ectsum_test.jsonl"):
        corpus = TextCorpusDataModule("minilm", train_file=str(root / "ectsum" / name), text_column="transcript",
                                      lines=True, min_words=min_words, validation_fraction=0.0)
        texts += corpus.splits["train"][0]
    return texts


def out_of_domain(root: Path, min_words: int) -> dict[str, list[str]]:
    """Customer-service requests and everyday dialogue: text the selection should pass over for FPB."""
    import csv

    with open(root / "banking77" / "train.csv", newline="") as file:
        banking = [row["text"] for row in csv.DictReader(file)]
    with open(root / "bitext_customer_support" / "Bitext_Sample_Customer_Support_Training_Dataset.csv",
              newline="") as file:
        bitext = [row["instruction"] for row in csv.DictReader(file)]
    dialogue = []
    for record in map(json.loads, (root / "dialogsum" / "dialogsum.train.first4000.jsonl").read_text().splitlines()):
        dialogue += [turn.split(":", 1)[-1].strip() for turn in record["dialogue"].split("\n")]
    return {name: [t for t in texts if len(t.split()) >= min_words]
            for name, texts in (("banking77", banking), ("bitext", bitext), ("dialogsum", dialogue))}


def sample(texts: list[str], size: int, rng: np.random.Generator) -> list[str]:
    """A seeded sample of at most ``size`` texts, in their order."""
    return [texts[i] for i in sorted(rng.permutation(len(texts))[:size].tolist())]


def check_no_fpb(texts: list[str], root: Path) -> None:
    """No FPB sentence (any agreement level) in a domain corpus: the target's test rows must stay unseen."""
    from lightning_adapters.tasks.finance_sentiment import FinanceSentimentDataModule

    fpb = FinanceSentimentDataModule(data_dir=str(root / "financial_phrasebank"), agreement="50agree",
                                     test_fraction=0.0, validation_fraction=0.0)
    sentences = {text.strip().lower() for text in fpb.splits["train"][0]}
    leaked = sentences & {text.strip().lower() for text in texts}
    assert not leaked, f"{len(leaked)} FPB sentences in the domain corpus, e.g. {next(iter(leaked))!r}"


# ---- domain adapters ----------------------------------------------------------------------------------------------
@dataclass
class Domain:
    name: str
    texts: int
    perplexity_before: float
    perplexity_after: float
    cpu_s: float
    wall_s: float


def train_domain(name: str, texts: list[str], args: argparse.Namespace, work: Path) -> tuple[Path, Domain]:
    """A Pfeiffer adapter trained by masked LM on ``texts`` (2 % held out), exported to ``work/<name>`` (the corpus
    beside it: shared data, never written into the repository's results)."""
    from lightning_adapters import AdapterModule, LanguageModelingHead, TextCorpusDataModule

    corpus = work / f"{name}.txt"
    corpus.write_text("\n".join(texts) + "\n")
    L.seed_everything(args.domain_seed, workers=True, verbose=False)
    start, cpu = time.perf_counter(), time.process_time()
    data = TextCorpusDataModule("minilm", train_file=str(corpus), validation_fraction=0.02, seed=args.domain_seed,
                                max_length=args.max_length, batch_size=args.batch_size,
                                eval_batch_size=args.eval_batch_size)
    module = AdapterModule("minilm", strategy=fusion.pfeiffer(args), head=LanguageModelingHead(),
                           learning_rate=args.domain_lr, weight_decay=0.01, warmup_ratio=0.1)
    trainer = L.Trainer(max_epochs=args.domain_epochs, accelerator="auto", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, **fusion.limits(args))
    before = trainer.validate(module, datamodule=data, verbose=False)[0]["val_perplexity"]
    trainer.fit(module, datamodule=data)
    after = trainer.validate(module, datamodule=data, verbose=False)[0]["val_perplexity"]
    folder = work / name
    module.save_adapter(str(folder))
    info = Domain(name, len(texts), before, after, time.process_time() - cpu, time.perf_counter() - start)
    print(f"domain adapter {name}: {len(texts):,} texts, held-out perplexity {before:.1f} -> {after:.1f}, "
          f"{info.cpu_s:.0f} CPU s", flush=True)
    return folder, info


def select(pool: dict[str, list[str]], targets: list[str], size: int, args: argparse.Namespace) -> tuple[
        list[str], dict[str, int]]:
    """The ``size`` pool texts nearest the target texts, and how many came from each source."""
    from lightning_adapters.selection import select_texts

    texts = [text for source in pool.values() for text in source]
    origin = [name for name, source in pool.items() for _ in source]
    chosen = select_texts("minilm", texts, targets, size, batch_size=args.eval_batch_size,
                          max_length=args.max_length)
    counts = {name: 0 for name in pool}
    for index in chosen:
        counts[origin[index]] += 1
    return [texts[i] for i in chosen], counts


# ---- target runs --------------------------------------------------------------------------------------------------
@dataclass
class Run:
    method: str
    seed: int
    best_epoch: int
    val_accuracy: float
    test_accuracy: float
    test_macro_f1: float
    cpu_s: float


def target(args: argparse.Namespace, seed: int, augmented: bool):
    """`fusion.py`'s target rows (`accuracy.py`'s FPB AllAgree splits, the training split cut to a stratified
    ``--train-rows``), batched by the DataModule itself (``group_by_length``) so augmentation's per-epoch rows work."""
    from lightning_adapters.data.augmentation import Augmentation
    from lightning_adapters.tasks.finance_sentiment import FinanceSentimentDataModule

    augment = Augmentation(swap=args.edit, delete=args.edit, insert=args.edit, copies=1) if augmented else None
    data = FinanceSentimentDataModule(data_dir=str(args.data_root / "financial_phrasebank"), agreement="allagree",
                                      test_fraction=0.2, validation_fraction=0.1, tokenizer="minilm",
                                      seed=args.split_seed, max_length=args.max_length, batch_size=args.batch_size,
                                      eval_batch_size=args.eval_batch_size, group_by_length=True, augment=augment)
    train = data.splits["train"]
    rows = fusion.stratified_rows(train[1], args.train_rows, args.subset_seed)
    data.splits["train"] = tuple([column[i] for i in rows] for column in train)
    data.seed = seed  # the training order's seed (the splits above were carved with the split seed)
    return data


def run_one(method: str, seed: int, folders: dict[str, Path], args: argparse.Namespace) -> Run:
    from lightning_adapters import AdapterModule

    L.seed_everything(seed, workers=True, verbose=False)
    cpu = time.process_time()
    data = target(args, seed, augmented=method == AUGMENTED)
    source = {DOMAIN: "random", SELECTED: "selected", AUGMENTED: "selected"}.get(method)
    extra = {} if source is None else {"adapters": {source: str(folders[source])}, "init_from": source}
    module = AdapterModule("minilm", strategy=fusion.pfeiffer(args), head=fusion.head(), label_names=data.label_names,
                           learning_rate=args.lr, weight_decay=0.01, warmup_ratio=0.1, **extra)
    best, scores = fusion.fit_and_test(module, data, args.epochs, args)
    run = Run(method, seed, best.best_epoch, best.best, scores["accuracy"], scores["macro_f1"],
              time.process_time() - cpu)
    print(f"{method} seed {seed}: test acc {100 * run.test_accuracy:.2f}, macro-F1 {100 * run.test_macro_f1:.2f} "
          f"(best epoch {run.best_epoch}), {run.cpu_s:.0f} CPU s", flush=True)
    return run


# ---- report -------------------------------------------------------------------------------------------------------
def report(runs: list[Run], domains: list[Domain], counts: dict[str, int], pool: dict[str, int], setup: str,
           out: Path, command: str) -> str:
    records, rows = [], []
    alone = {r.seed: r for r in runs if r.method == ALONE}
    for method in [m for m in METHODS if any(r.method == m for r in runs)]:
        group = [r for r in runs if r.method == method]
        acc = fusion.mean_std([100 * r.test_accuracy for r in group])
        f1 = fusion.mean_std([100 * r.test_macro_f1 for r in group])
        paired = [100 * (r.test_accuracy - alone[r.seed].test_accuracy) for r in group if r.seed in alone]
        delta = fusion.mean_std(paired) if method != ALONE and paired else None
        rows.append([method, f"{acc[0]:.2f} ± {acc[1]:.2f}", f"{f1[0]:.2f} ± {f1[1]:.2f}",
                     "–" if delta is None else f"{delta[0]:+.2f} ± {delta[1]:.2f}",
                     " / ".join(f"{100 * r.test_accuracy:.2f}" for r in group),
                     f"{statistics.fmean(r.cpu_s for r in group):.0f}"])
        for metric, value in (("test accuracy mean", acc[0]), ("test accuracy std", acc[1]),
                              ("test macro-F1 mean", f1[0]), ("test macro-F1 std", f1[1])):
            records.append(_report.record(BENCHMARK, TASK, method, metric, round(value, 4), "%", setup))
        if delta is not None:
            records.append(_report.record(BENCHMARK, TASK, method, "paired gain in test accuracy vs adapter alone",
                                          round(delta[0], 4), "pt", setup))
    table = _report.markdown_table(["method", "test acc % mean ± std", "test macro-F1 %",
                                    "Δ acc vs alone, paired by seed", "test acc per seed", "CPU s / run"], rows)
    domain_rows = [[d.name, f"{d.texts:,}", f"{d.perplexity_before:.1f}", f"{d.perplexity_after:.1f}",
                    f"{d.cpu_s:.0f}"] for d in domains]
    for d in domains:
        records.append(_report.record(BENCHMARK, "masked-LM domain adapter", d.name, "held-out perplexity after",
                                      round(d.perplexity_after, 3), "perplexity", setup))
    domain_table = _report.markdown_table(["domain adapter", "texts", "held-out perplexity before", "after",
                                           "CPU s"], domain_rows)
    made_of = ", ".join(f"{name} {counts.get(name, 0):,} of {size:,}" for name, size in pool.items())
    text = (f"# Domain adapters, selection and augmentation: {TASK}\n\n{table}\n\n{domain_table}\n\n"
            f"Selected sentences by source (chosen of pool): {made_of}.\n\nSetup: {setup}.\n\nMade by `{command}`\n")
    _report.write_json(out, records)
    (out / "results.md").write_text(text)
    return text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", type=Path, default=accuracy.default_data_root())
    p.add_argument("--out", type=Path, default=None, help="output folder (default: results/domain_data)")
    p.add_argument("--work", type=Path, default=Path("runs/domain_data"),
                   help="where the domain corpora and adapters go (default runs/domain_data, not committed)")
    p.add_argument("--quick", action="store_true", help="smoke test: small corpora, 1 epoch of 2 batches, one seed")
    p.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS, metavar="METHOD")
    p.add_argument("--train-rows", type=int, default=300)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--lr", type=float, default=3e-3, help="the adapter's rate in fusion.py's table")
    p.add_argument("--domain-texts", type=int, default=8000, help="sentences each domain adapter trains on")
    p.add_argument("--pool-finance", type=int, default=24000, help="seeded ECTSum sentences in the selection pool")
    p.add_argument("--pool-other", type=int, default=5000, help="seeded sentences of each out-of-domain source")
    p.add_argument("--domain-epochs", type=int, default=1)
    p.add_argument("--domain-lr", type=float, default=1e-3)
    p.add_argument("--domain-seed", type=int, default=42)
    p.add_argument("--min-words", type=int, default=5, help="shorter pool sentences are left out")
    p.add_argument("--edit", type=float, default=0.1, help="augmentation: swap, delete and insert probability")
    p.add_argument("--reduction-factor", type=int, default=16)
    p.add_argument("--subset-seed", type=int, default=0)
    p.add_argument("--split-seed", type=int, default=42)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--eval-batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    args.banking77_train = 0  # fusion.data_args reads it; unused here
    if args.quick:
        args.epochs = args.domain_epochs = 1
        args.seeds = args.seeds[:1]
        args.batch_size, args.eval_batch_size, args.max_length = 8, 16, 32
        args.train_rows, args.domain_texts, args.pool_finance, args.pool_other = min(args.train_rows, 40), 200, 600, 100
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    _report.setup_runtime(args.threads)
    needed = ("financial_phrasebank", "ectsum", "banking77", "bitext_customer_support", "dialogsum")
    missing = [d for d in needed if not (args.data_root / d).is_dir()]
    if missing:
        sys.exit(f"{', '.join(missing)} not found in {args.data_root} — pass --data-root or set "
                 "LIGHTNING_ADAPTERS_DATA")
    out = args.out or _report.default_out(BENCHMARK)
    out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    finance = ectsum_sentences(args.data_root, args.min_words)
    others = out_of_domain(args.data_root, args.min_words)
    rng = np.random.default_rng(args.domain_seed)
    random_texts = sample(finance, args.domain_texts, rng)
    pool = {"ectsum": sample(finance, args.pool_finance, rng),
            **{name: sample(texts, args.pool_other, rng) for name, texts in others.items()}}
    labelled = target(args, args.seeds[0], augmented=False).splits["train"][0]
    selected, counts = select(pool, labelled, args.domain_texts, args)
    check_no_fpb(random_texts + selected, args.data_root)
    folders, domains = {}, []
    for name, texts in (("random", random_texts), ("selected", selected)):
        folders[name], info = train_domain(name, texts, args, args.work)
        domains.append(info)
    runs = [run_one(method, seed, folders, args) for method in args.methods for seed in args.seeds]
    (out / "runs.json").write_text(json.dumps([asdict(r) for r in runs], indent=1))
    setup = (f"MiniLM, Pfeiffer adapters (reduction factor {args.reduction_factor}) for the domain and the task; "
             f"target: fusion.py's {args.train_rows} FPB AllAgree training rows (subset seed {args.subset_seed}), its "
             f"validation and test rows; task: lr {args.lr:g}, {args.epochs} epochs, seeds {args.seeds}, best epoch by "
             f"validation accuracy; domain adapters: masked LM (15 %), {args.domain_texts:,} sentences of >= "
             f"{args.min_words} words, {args.domain_epochs} epoch(s), lr {args.domain_lr:g}, max_length "
             f"{args.max_length}; selection: round-robin nearest neighbours of the labelled texts in a pool of "
             f"{sum(map(len, pool.values())):,} sentences; augmentation: swap/delete/insert {args.edit:g} per word; "
             f"{_report.hardware()}; {_report.versions()}; {time.perf_counter() - start:.0f} s wall in all"
             f"{'; QUICK smoke run' if args.quick else ''}")
    command = "python recipes/benchmark/domain_data.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(report(runs, domains, counts, {name: len(texts) for name, texts in pool.items()}, setup, out,
                 command.strip()))


if __name__ == "__main__":
    main()
