"""DialogSum ROUGE of SmolLM2-135M-Instruct: its own zero-shot prompt vs the same prompt + a LoRA adapter (CPU).

One command (35 minutes wall-clock at 1 thread on a shared 2-core CPU under load ~11; timings are wall-clock):

    python recipes/benchmark/summarization.py    # -> recipes/benchmark/results/summarization/{results.md,json}
    python recipes/benchmark/summarization.py --quick --backbone <tiny LM folder>   # smoke test

Both runs use one prompt (instruction + dialogue in SmolLM2's chat template), greedy decoding and the same test
subset; "zero-shot" is the untouched model, i.e. the LoRA module before training (LoRA starts as the identity).
Subsets, sized for CPU: the first ``--train-rows`` dialogues of DialogSum train (one epoch) and the first
``--test-rows`` of the official test split, scored against all three references (best per dialogue), ROUGE-1/2/L/Lsum
F x 100 with Google's rouge-score (stemming on). Dialogues are cut to ``--max-source-length`` tokens (head).
To keep the CPU budget, LoRA sits in the top ``--lora-layers`` decoder layers only (backward stops below them).
Cost per training step and per generated token are measured in the same run and reported.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import lightning as L

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _report  # noqa: E402

BENCHMARK = "summarization"
TASK = "DialogSum"
DATA = Path(os.environ.get("LIGHTNING_ADAPTERS_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(DATA / "dialogsum"))
    parser.add_argument("--backbone", default="smollm2")
    parser.add_argument("--train-rows", type=int, default=128)
    parser.add_argument("--test-rows", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--lora-layers", type=int, default=12, help="LoRA in the top N layers (0: every layer)")
    parser.add_argument("--max-source-length", type=int, default=256)
    parser.add_argument("--max-new-tokens", type=int, default=60)
    parser.add_argument("--plain-prompt", action="store_true", help="no chat template (base models)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="smoke test: 8 training rows, 4 test rows")
    parser.add_argument("--out", default=str(_report.default_out(BENCHMARK)))
    args = parser.parse_args(argv)
    if args.quick:
        args.train_rows, args.test_rows, args.max_new_tokens = 8, 4, 8
    return args


def top_layers_lora(r: int, top: int):
    """LoRA on every Linear of the top ``top`` decoder layers (Llama-style names); ``top <= 0``: the defaults."""
    from lightning_adapters import Lora

    class TopLayersLora(Lora):
        def apply(self, model) -> None:
            layers = model.config.num_hidden_layers
            if 0 < top < layers:
                chosen = "|".join(str(i) for i in range(layers - top, layers))
                projections = r"(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
                self.target_modules = rf"model\.layers\.({chosen})\.{projections}"
            super().apply(model)

    return TopLayersLora(r=r, alpha=2 * r)


def generate_and_score(trainer: L.Trainer, module, data) -> tuple[dict[str, float], list[dict], float, int]:
    """Predict the test subset; (ROUGE, rows, seconds, generated tokens)."""
    from lightning_adapters.text_metrics import ROUGE

    start = time.perf_counter()
    rows = [row for batch in trainer.predict(module, datamodule=data) for row in batch]
    seconds = time.perf_counter() - start
    rouge = ROUGE()
    rouge.update([r["generated"] for r in rows], [r["reference"] for r in rows])
    limit = trainer.lightning_module.head.max_new_tokens  # +1: the end token, unless the output hit the limit
    tokens = sum(min(limit, len(data.tokenizer(r["generated"], add_special_tokens=False)["input_ids"]) + 1)
                 for r in rows)
    return {k: round(v.item(), 2) for k, v in rouge.compute().items()}, rows, seconds, tokens


def run(args: argparse.Namespace) -> dict:
    from lightning_adapters import AdapterModule
    from lightning_adapters.heads.generation import GenerationHead
    from lightning_adapters.tasks.dialogsum import DialogSumDataModule

    _report.setup_runtime(args.threads)
    L.seed_everything(42, verbose=False)
    data = DialogSumDataModule(data_dir=args.data_dir, tokenizer=args.backbone, chat_template=not args.plain_prompt,
                               max_source_length=args.max_source_length, max_rows=args.train_rows,
                               max_eval_rows=args.test_rows, batch_size=args.batch_size, eval_batch_size=8)
    head = GenerationHead(max_new_tokens=args.max_new_tokens, metrics=["rouge"])
    module = AdapterModule(args.backbone, strategy=top_layers_lora(args.lora_r, args.lora_layers), head=head,
                           learning_rate=args.lr)
    trainer = L.Trainer(max_epochs=args.epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        num_sanity_val_steps=0)
    results = {"zero-shot": generate_and_score(trainer, module, data)}
    start = time.perf_counter()
    trainer.fit(module, datamodule=data)
    train_seconds = time.perf_counter() - start
    results["+ LoRA adapter"] = generate_and_score(trainer, module, data)
    return {"results": results, "train_seconds": train_seconds, "steps": trainer.global_step,
            "trainable": sum(p.numel() for p in module.parameters() if p.requires_grad)}


def report(args: argparse.Namespace, outcome: dict) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    setup = (f"{args.backbone}; DialogSum train first {args.train_rows} rows x "
             f"{args.epochs} epoch(s), test first {args.test_rows} rows (3 references); LoRA r={args.lora_r} in the "
             f"top {args.lora_layers} layers, lr {args.lr}, batch {args.batch_size}; source <= "
             f"{args.max_source_length} tokens; greedy, <= {args.max_new_tokens} new tokens; {_report.hardware()}; "
             f"{_report.versions()}")
    records, rows = [], []
    record = _report.record
    for method, (rouge, _, seconds, tokens) in outcome["results"].items():
        records += [record(BENCHMARK, TASK, method, name, value, "F x100", setup) for name, value in rouge.items()]
        records.append(record(BENCHMARK, TASK, method, "seconds per generated token", round(seconds / tokens, 4), "s",
                              setup))
        rows.append([method, *(rouge[k] for k in ("rouge1", "rouge2", "rougeL", "rougeLsum")), tokens,
                     round(seconds / tokens, 3)])
    step_seconds = outcome["train_seconds"] / max(1, outcome["steps"])
    records.append(record(BENCHMARK, TASK, "+ LoRA adapter", "seconds per training step", round(step_seconds, 2), "s",
                          setup))
    _report.write_json(out, records)
    zero, tuned = (outcome["results"][m][0]["rougeL"] for m in ("zero-shot", "+ LoRA adapter"))
    table = _report.markdown_table(["method", "ROUGE-1", "ROUGE-2", "ROUGE-L", "ROUGE-Lsum", "generated tokens",
                                    "s / generated token"], rows)
    check = _report.check_line("SmolLM2 + adapter beats its zero-shot prompt by >= 5 ROUGE-L", tuned - zero >= 5,
                               f"{tuned:.2f} vs {zero:.2f} ({tuned - zero:+.2f} pt)")
    text = (f"# DialogSum summarization: zero-shot vs LoRA adapter\n\nSetup: {setup}.\n\n{table}\n\n{check}\n\n"
            f"Training: {outcome['steps']} steps, {outcome['train_seconds']:.0f} s ({step_seconds:.1f} s/step), "
            f"{outcome['trainable']:,} trainable parameters.\n")
    (out / "results.md").write_text(text)
    with open(out / "predictions.jsonl", "w") as file:  # ids and generated text only: DialogSum is not ours to copy
        for method, (_, preds, _, _) in outcome["results"].items():
            for row in preds:
                file.write(json.dumps({"method": method, "fname": row["fname"], "generated": row["generated"]},
                                      ensure_ascii=False) + "\n")
    print(text)


if __name__ == "__main__":
    arguments = parse_args()
    report(arguments, run(arguments))
