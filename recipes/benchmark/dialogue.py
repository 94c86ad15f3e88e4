"""Customer-support replies (Bitext): SmolLM2-135M-Instruct zero-shot vs + LoRA adapter, perplexity and ROUGE-L/BLEU.

One command (sizes below; the measured time is in results.md):

    python recipes/benchmark/dialogue.py          # -> recipes/benchmark/results/dialogue/{results.md,json,png}
    python recipes/benchmark/dialogue.py --quick  # smoke test: the bundled sample, 2 steps, 4 replies

Data: the Bitext customer-support CSV (4,514 single-turn exchanges, 27 intents) from ``--data-root``, read by
`CustomerSupportRepliesDataModule` with the pack's system prompt and SmolLM2's own chat template. A seeded test split
keeps every intent's share (``--test-fraction`` 0.011: 2 requests per intent, 54 rows); training batches are drawn
(seeded shuffle) from the remaining rows, ``--steps`` x ``--batch-size`` of them.

Both methods are the same `AdapterModule` (LoRA r=8 on q/v projections, `GenerationHead`) under `lightning.Trainer`:
zero-shot is that module before training (LoRA's B matrices start at zero, so it is exactly the base model, checked
below), the adapter is it after training. Scores on the test split: perplexity of the reference replies (assistant
tokens incl. end-of-turn, teacher-forced) and ROUGE-L / sacreBLEU of greedy replies (``--max-new-tokens`` cap)
against the references, with the library's metric classes; ROUGE-L per Bitext category is reported too.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import lightning as L

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _report  # noqa: E402

BENCHMARK, TASK = "dialogue", "Bitext customer-support replies"
ZERO, ADAPTED = "SmolLM2 zero-shot", "SmolLM2 + LoRA (ours)"


class StepTimer(L.Callback):
    """Wall time of each training step (forward, backward, optimizer)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.times.append(time.perf_counter() - self._start)


def trainer(**kwargs) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, **kwargs)


def score(model, data, limit) -> dict:
    """Perplexity (test loop) and generated replies (predict loop) with their ROUGE-L/BLEU and costs."""
    from lightning_adapters.text_metrics import BLEU, ROUGE

    start = time.perf_counter()
    perplexity = trainer(limit_test_batches=limit).test(model, data, verbose=False)[0]["test_perplexity"]
    eval_time = time.perf_counter() - start
    start = time.perf_counter()
    rows = [r for batch in trainer(limit_predict_batches=limit).predict(model, data) for r in batch]
    gen_time = time.perf_counter() - start
    tokens = sum(len(model.head.tokenizer(r["generated"], add_special_tokens=False)["input_ids"]) for r in rows)
    rouge, bleu = ROUGE(rouge_types=["rougeL"]), BLEU()
    rouge.update([r["generated"] for r in rows], [r["reference"] for r in rows])
    bleu.update([r["generated"] for r in rows], [r["reference"] for r in rows])
    by_category = {}
    for category in sorted({r["category"] for r in rows}):
        part = [r for r in rows if r["category"] == category]
        metric = ROUGE(rouge_types=["rougeL"])
        metric.update([r["generated"] for r in part], [r["reference"] for r in part])
        by_category[category] = (len(part), float(metric.compute()["rougeL"]))
    return {"perplexity": float(perplexity), "rougeL": float(rouge.compute()["rougeL"]), "bleu": float(bleu.compute()),
            "rows": rows, "eval_seconds": eval_time, "generate_seconds": gen_time, "generated_tokens": tokens,
            "by_category": by_category}


def run(args) -> tuple[list[dict], str]:
    from lightning_adapters import AdapterModule, Lora
    from lightning_adapters.heads.generation import GenerationHead
    from lightning_adapters.tasks.customer_support_replies import CustomerSupportRepliesDataModule

    L.seed_everything(args.seed, verbose=False)
    data_dir = None if args.quick else str(Path(args.data_root) / "bitext_customer_support")
    data = CustomerSupportRepliesDataModule(data_dir=data_dir, tokenizer="smollm2", test_fraction=args.test_fraction,
                                            validation_fraction=args.test_fraction, seed=args.seed,
                                            max_length=args.max_length, truncation="tokens",
                                            batch_size=args.batch_size, eval_batch_size=args.eval_batch_size)
    model = AdapterModule("smollm2", strategy=Lora(r=8, alpha=16), learning_rate=args.lr, warmup_ratio=0.1,
                          head=GenerationHead(max_new_tokens=args.max_new_tokens, metrics=["perplexity"]))
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(bool((p == 0).all()) for p in lora_b), "zero-shot must be the base model (LoRA B = 0)"
    limit = 1 if args.quick else 1.0
    results = {ZERO: score(model, data, limit)}
    timer = StepTimer()
    trainer(max_steps=args.steps, callbacks=[timer]).fit(model, data)
    results[ADAPTED] = score(model, data, limit)
    sizes = {split: len(rows) for split, rows in data.splits.items()}
    setup = (f"SmolLM2-135M-Instruct (GGUF Q4_1 de-quantised, fp32), LoRA r=8 alpha=16 q/v; {args.steps} steps x "
             f"batch {args.batch_size} (lr {args.lr}, 10% warm-up, linear decay); test {sizes['test']} rows "
             f"(seeded, intent-stratified); max_length {args.max_length}; greedy, max_new_tokens {args.max_new_tokens};"
             f" {_report.hardware()}; {_report.versions()}")
    step = sum(timer.times[1:]) / max(1, len(timer.times) - 1)  # the first step pays one-off warm-up
    return records(results, step, setup), report(results, sizes, step, setup, args)


def records(results: dict, step: float, setup: str) -> list[dict]:
    out = []
    for method, r in results.items():
        rec = lambda metric, value, unit: _report.record(BENCHMARK, TASK, method, metric, value, unit, setup)  # noqa
        out += [rec("test_perplexity", round(r["perplexity"], 3), "perplexity"),
                rec("test_rougeL", round(r["rougeL"], 2), "F x 100"), rec("test_bleu", round(r["bleu"], 2), "BLEU"),
                rec("generate_seconds_per_token", round(r["generate_seconds"] / max(1, r["generated_tokens"]), 4),
                    "s/token")]
    out.append(_report.record(BENCHMARK, TASK, ADAPTED, "train_step_seconds", round(step, 2), "s", setup))
    return out


def report(results: dict, sizes: dict, step: float, setup: str, args) -> str:
    zero, adapted = results[ZERO], results[ADAPTED]
    table = _report.markdown_table(
        ["method", "test perplexity (references)", "ROUGE-L", "BLEU", "generation s/token"],
        [[m, f"{r['perplexity']:.3f}", f"{r['rougeL']:.2f}", f"{r['bleu']:.2f}",
          f"{r['generate_seconds'] / max(1, r['generated_tokens']):.3f}"] for m, r in results.items()])
    categories = _report.markdown_table(
        ["category", "rows", f"ROUGE-L {ZERO}", f"ROUGE-L {ADAPTED}"],
        [[c, n, f"{zero['by_category'][c][1]:.2f}", f"{adapted['by_category'][c][1]:.2f}"]
         for c, (n, _) in zero["by_category"].items()])
    examples = "\n\n".join(
        f"**request** ({a['intent']}): {a['source']}\n\n- reference: {a['reference'][:300]}\n- zero-shot: "
        f"{z['generated'][:300]}\n- adapter: {a['generated'][:300]}" for z, a in zip(zero["rows"][:3],
                                                                                  adapted["rows"][:3], strict=True))
    checks = [_report.check_line("adapter beats zero-shot on reference perplexity", adapted["perplexity"] <
                                 zero["perplexity"], f"{adapted['perplexity']:.3f} vs {zero['perplexity']:.3f}"),
              _report.check_line("adapter beats zero-shot on ROUGE-L", adapted["rougeL"] > zero["rougeL"],
                                 f"{adapted['rougeL']:.2f} vs {zero['rougeL']:.2f}")]
    return (f"# Dialogue: {TASK}\n\n`python recipes/benchmark/dialogue.py{' --quick' if args.quick else ''}`\n\n"
            f"Setup: {setup}.\n\nSplit sizes (rows): {sizes}; training used {args.steps * args.batch_size} "
            f"exchanges. Train step: {step:.1f} s (mean after the first). Evaluation: perplexity "
            f"{zero['eval_seconds']:.0f} s / {adapted['eval_seconds']:.0f} s, generation {zero['generate_seconds']:.0f}"
            f" s / {adapted['generate_seconds']:.0f} s (zero-shot / adapter).\n\n{table}\n\n## Acceptance\n\n"
            + "\n".join(checks) + f"\n\n## ROUGE-L per Bitext category\n\n{categories}\n\n## Examples\n\n{examples}\n")


def plot(results: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for ax, metric, title in zip(axes, ("test_perplexity", "test_rougeL"), ("perplexity (lower is better)",
                                                                            "ROUGE-L (higher is better)"), strict=True):
        values = {r["method"]: r["value"] for r in results if r["metric"] == metric}
        ax.bar(list(values), list(values.values()), color=["#999999", "#4477aa"])
        ax.set_title(title, fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(TASK, fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "dialogue.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=os.environ.get("LIGHTNING_ADAPTERS_DATA", str(
        Path(__file__).resolve().parents[3] / "shared" / "data")))
    parser.add_argument("--out", type=Path, default=_report.default_out(BENCHMARK))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--eval-batch-size", type=int, default=9)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--test-fraction", type=float, default=0.011)
    parser.add_argument("--max-length", type=int, default=320)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--quick", action="store_true", help="bundled sample, 2 steps, one eval batch")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.test_fraction, args.max_new_tokens, args.eval_batch_size = 2, 0.1, 8, 4
    _report.setup_runtime(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    start, cpu = time.perf_counter(), time.process_time()
    results, markdown = run(args)
    markdown += (f"\nTotal: {time.perf_counter() - start:.0f} s wall, {time.process_time() - cpu:.0f} s CPU (this "
                 "process; the machine was shared, so wall time includes waiting for a core).\n")
    _report.write_json(args.out, results)
    (args.out / "results.md").write_text(markdown)
    plot(results, args.out)
    print(markdown)


if __name__ == "__main__":
    main()
