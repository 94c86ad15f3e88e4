"""Adapter placement on Financial PhraseBank AllAgree or CoNLL-2003 (MiniLM): adapters in half the layers, placed by
the gradient probe (``lightning-adapters place``), vs the naive half (the first layers) vs every layer.

Each variant is one ``fit`` of the task's config (``configs/finance_sentiment/phrasebank.yaml``,
``configs/conll2003/lora.yaml``) with the chosen strategy fragment and ``--test_after_fit true`` (best epoch by
validation, tested once). Reported: the task's test metrics (accuracy and macro-F1; entity F1 and precision),
trainable weights, and training wall time per epoch (validation included), all measured in this one run.

    python recipes/benchmark/placement.py --strategy lora --budget 3 --epochs 6
    python recipes/benchmark/placement.py --task conll2003 --budget 3 --epochs 2 --lr 1e-3 \
        --trainer.limit_train_batches 200      # CoNLL-2003 (entity F1), a training subset per epoch for CPU time
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml
from safetensors import safe_open

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _report  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
BENCHMARK = "placement"
# task -> (config, name in the report, headline test metric, second metric)
TASKS = {"fpb": ("configs/finance_sentiment/phrasebank.yaml", "Financial PhraseBank AllAgree (MiniLM)", "test_accuracy",
                 "test_macro_f1"),
         "conll2003": ("configs/conll2003/lora.yaml", "CoNLL-2003 NER (MiniLM)", "test_f1", "test_precision")}
FRAGMENTS = {"lora": "configs/strategy/lora.yaml", "pfeiffer": "configs/strategy/bottleneck_pfeiffer.yaml"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=sorted(TASKS), default="fpb")
    parser.add_argument("--strategy", choices=sorted(FRAGMENTS), default="lora")
    parser.add_argument("--budget", type=int, default=3, help="layers that keep adapters (MiniLM has 6)")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--lr", type=float, default=2e-3, help="the hand-tuned LoRA rate (README strategies table)")
    parser.add_argument("--batches", type=int, default=16, help="training batches the probe runs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="default: results/placement (fpb), "
                        "results/placement_<task> otherwise")
    args, args.fit = parser.parse_known_args(argv)
    args.config, args.task_name, args.metric, args.second = TASKS[args.task]
    if args.out is None:
        args.out = _report.default_out(BENCHMARK if args.task == "fpb" else f"{BENCHMARK}_{args.task}")
    return args


def command(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "lightning_adapters.cli", *arguments]


def run(args: argparse.Namespace, name: str, arguments: list[str]) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    with open(args.out / f"{name}.log", "w") as log:
        subprocess.run(command(*arguments), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    return time.perf_counter() - start


def fit(args: argparse.Namespace, name: str, strategy: str) -> dict:
    folder = args.out / name
    arguments = ["fit", "--config", args.config, "--model.init_args.strategy", strategy,
                 "--model.init_args.learning_rate", str(args.lr), "--trainer.max_epochs", str(args.epochs),
                 "--trainer.enable_progress_bar", "false", "--test_after_fit", "true",
                 "--trainer.default_root_dir", str(folder), "--export_dir", str(folder / "adapter"), *args.fit]
    wall = run(args, name, arguments)
    card = (folder / "adapter" / "README.md").read_text()
    metrics = {key: float(value) for key, value in re.findall(r"(test_\w+): ([\d.]+)", card)}
    with safe_open(folder / "adapter" / "adapter_model.safetensors", "pt") as weights:  # adapter and head
        params = sum(_numel(weights.get_slice(key).get_shape()) for key in weights.keys())
    config = json.loads((folder / "adapter" / "adapter_config.json").read_text())
    return {"name": name, "layers": config["strategy"]["init_args"].get("layers"), "wall_s": wall,
            "epoch_s": wall / args.epochs, "params": params, **metrics}


def _numel(shape: list[int]) -> int:
    total = 1
    for size in shape:
        total *= size
    return total


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    _report.setup_runtime(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    fragment = FRAGMENTS[args.strategy]
    placed = args.out / "placed.yaml"
    probe_s = run(args, "place", ["place", "--config", args.config,
                                  "--model.init_args.strategy", fragment, "--budget", str(args.budget),
                                  "--batches", str(args.batches), "--output", str(placed), *args.fit])
    probe = json.loads(placed.with_suffix(".json").read_text())
    naive = yaml.safe_load(placed.read_text())
    naive["init_args"]["layers"] = f"first {args.budget}"
    first = args.out / "first.yaml"
    first.write_text(yaml.safe_dump(naive, sort_keys=False))
    results = [fit(args, "all layers", fragment), fit(args, "probe's half", str(placed)),
               fit(args, "first half", str(first))]
    setup = (f"{args.strategy}, lr {args.lr:g}, {args.epochs} epochs, budget {args.budget} of 6 layers, probe on "
             f"{args.batches} batches; {_report.hardware()}; {_report.versions()}")
    rows, records = [], []
    for result in results:
        rows.append([result["name"], result["layers"] if result["layers"] is not None else "all",
                     f"{100 * result[args.metric]:.2f}", f"{100 * result.get(args.second, float('nan')):.2f}",
                     f"{result['params']:,}", f"{result['epoch_s']:.0f}"])
        for metric, value, unit in ((args.metric.replace("_", " "), round(100 * result[args.metric], 2), "%"),
                                    (args.second.replace("_", " "),
                                     round(100 * result.get(args.second, float("nan")), 2), "%"),
                                    ("trainable weights", result["params"], "count"),
                                    ("wall per epoch", round(result["epoch_s"], 1), "s")):
            records.append(_report.record(BENCHMARK, args.task_name, result["name"], metric, value, unit, setup))
    every, probed, naive = (100 * r[args.metric] for r in results)
    checks = [_report.check_line("probe's half within 0.5 pt of all layers", probed >= every - 0.5,
                                 f"{probed:.2f} vs {every:.2f}"),
              _report.check_line("probe's half beats the first half", probed > naive, f"{probed:.2f} vs {naive:.2f}")]
    scores = ", ".join(f"{index}: {float(value):.2e}" for index, value in probe["scores"].items())
    table = _report.markdown_table(["placement", "layers", f"{args.metric} %", f"{args.second} %",
                                    "trainable weights", "wall s / epoch"], rows)
    text = (f"# Adapter placement: {args.task_name}\n\n{table}\n\n" + "\n".join(checks)
            + f"\n\nProbe scores (layer: RMS gradient): {scores}; chosen {probe['chosen']} in {probe_s:.0f} s."
            f"\n\nSetup: {setup}.\n\nMade by "
            f"`python recipes/benchmark/placement.py {' '.join(argv if argv is not None else sys.argv[1:])}`\n")
    _report.write_json(args.out, records)
    (args.out / "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
