"""Length-grouped training batches (`group_by_length=True`) vs shuffled ones: tokens computed and train-step time.

    python recipes/benchmark/padding.py            # -> recipes/benchmark/results/padding/{results.md,results.json}
    python recipes/benchmark/padding.py --quick    # smoke test: Financial PhraseBank only, 4 batches per loader

For each dataset, one training epoch of the pack's DataModule is drawn twice (same seed): shuffled, and grouped by
length. Tokens: ``input_ids.numel()`` summed over the epoch's batches (real tokens plus padding), exact. Time: MiniLM
with a Pfeiffer bottleneck, forward + loss + backward + AdamW step on the first ``--batches`` batches of each epoch,
the two loaders alternating batch by batch so that both see the same machine load; process CPU time. Data:
``$LIGHTNING_ADAPTERS_DATA`` (or ``--data-root``) with ``financial_phrasebank`` and ``banking77``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _report  # noqa: E402

BENCHMARK = "padding"


def datamodules(root: Path, group: bool) -> dict[str, object]:
    from lightning_adapters.tasks.customer_service import CustomerServiceDataModule
    from lightning_adapters.tasks.finance_sentiment import FinanceSentimentDataModule

    return {"Financial PhraseBank AllAgree (batch 16, max_length 96)": FinanceSentimentDataModule(
                data_dir=str(root / "financial_phrasebank"), batch_size=16, max_length=96, group_by_length=group),
            "BANKING77 (batch 32, max_length 128)": CustomerServiceDataModule(
                data_dir=str(root / "banking77"), batch_size=32, max_length=128, group_by_length=group)}


def epoch(datamodule) -> list[dict[str, torch.Tensor]]:
    datamodule.setup("fit")
    return list(datamodule.train_dataloader())


def step_times(label_names: list[str], loaders: dict[str, list], batches: int) -> dict[str, float]:
    """Median train-step CPU seconds of each loader's first ``batches`` batches, loaders alternating."""
    from lightning_adapters import AdapterModule
    from lightning_adapters.heads import ClassificationHead
    from lightning_adapters.strategies import Bottleneck

    torch.manual_seed(0)
    module = AdapterModule(backbone="minilm", strategy=Bottleneck(variant="pfeiffer"), head=ClassificationHead(),
                           label_names=label_names).train()
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4)
    times: dict[str, list[float]] = {name: [] for name in loaders}
    for i in range(min(batches, *(len(b) for b in loaders.values()))):
        for name, epoch_batches in loaders.items():
            batch = {k: v for k, v in epoch_batches[i].items() if isinstance(v, torch.Tensor)}
            start = time.process_time()
            loss = module.head.loss(module(batch), batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            times[name].append(time.process_time() - start)
    return {name: sorted(ts)[len(ts) // 2] for name, ts in times.items()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    env = os.environ.get("LIGHTNING_ADAPTERS_DATA")
    p.add_argument("--data-root", type=Path,
                   default=Path(env) if env else Path(__file__).resolve().parents[3] / "shared" / "data")
    p.add_argument("--batches", type=int, default=40, help="timed batches per loader and dataset")
    p.add_argument("--out", type=Path, default=_report.default_out(BENCHMARK))
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.batches = 4
    _report.setup_runtime(threads=1)
    started = time.perf_counter()
    setup = (f"{_report.hardware()}; {_report.versions()}; tokens: input_ids.numel() over one training epoch; time: "
             f"MiniLM + Pfeiffer bottleneck train step (forward, loss, backward, AdamW), median process CPU time over "
             f"the first {args.batches} batches of each epoch, loaders alternating")
    records, rows = [], []
    grouped_modules = datamodules(args.data_root, True)
    for task, shuffled_module in list(datamodules(args.data_root, False).items())[:1 if args.quick else None]:
        loaders = {"shuffled": epoch(shuffled_module), "grouped by length": epoch(grouped_modules[task])}
        tokens = {name: sum(int(b["input_ids"].numel()) for b in batches) for name, batches in loaders.items()}
        real = sum(int(b["attention_mask"].sum()) for b in loaders["shuffled"])
        median = step_times(shuffled_module.label_names, loaders, args.batches)
        for name in loaders:
            records += [_report.record(BENCHMARK, task, name, "tokens computed per epoch", tokens[name], "tokens",
                                       setup),
                        _report.record(BENCHMARK, task, name, "median train step", median[name], "s", setup)]
        token_ratio, time_ratio = tokens["shuffled"] / tokens["grouped by length"], median["shuffled"] / median[
            "grouped by length"]
        records += [_report.record(BENCHMARK, task, "grouped vs shuffled", "tokens ratio", token_ratio, "x", setup),
                    _report.record(BENCHMARK, task, "grouped vs shuffled", "step time ratio", time_ratio, "x", setup)]
        rows.append([task, f"{real:,}", f"{tokens['shuffled']:,}", f"{tokens['grouped by length']:,}",
                     f"{token_ratio:.2f}×", f"{1000 * median['shuffled']:.0f}",
                     f"{1000 * median['grouped by length']:.0f}", f"{time_ratio:.2f}×"])
        print(rows[-1], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    _report.write_json(args.out, records)
    table = _report.markdown_table(
        ["dataset", "real tokens", "computed, shuffled", "computed, grouped", "fewer tokens", "step ms, shuffled",
         "step ms, grouped", "faster steps"], rows)
    elapsed = time.perf_counter() - started
    text = (f"# Length-grouped vs shuffled training batches\n\n{table}\n\nSetup: {setup}.\n\n"
            f"Command: `python recipes/benchmark/padding.py{' --quick' if args.quick else ''}` ({elapsed:.0f} s)\n")
    (args.out / "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
