"""``lightning-adapters tune`` on Financial PhraseBank AllAgree (MiniLM): what pruning saves, and what the search
finds within the compute the README's hand-tuned runs took.

Two studies with the same search space, seed and trial count, one pruned (the search file's pruner) and one not
(``--no-pruning``); every trial is a real ``fit`` of ``configs/finance_sentiment/phrasebank.yaml`` with the chosen
strategy, judged on validation (the head's macro-F1), and tested once (``--test_after_fit true``: shown, never used
to choose). Reported: epochs trained by each study and the saving, the best trial of each (validation and test), and
the hand-tuned figure it is compared with (its grid's epochs and test accuracy, from the README's accuracy table).

    python recipes/benchmark/tune.py --strategy pfeiffer --trials 6 --epochs 6
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _report  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
BENCHMARK = "tune"
TASK = "Financial PhraseBank AllAgree (MiniLM)"
# The README's hand-tuned runs (recipes/benchmark/README.md): the grid's epochs in total and the chosen test accuracy.
HAND_TUNED = {"pfeiffer": {"epochs": 18, "test_accuracy": 92.94, "grid": "lr 2e-3/3e-3 x rf 16, lr 2e-3 x rf 8"},
              "houlsby": {"epochs": 18, "test_accuracy": 94.04, "grid": "lr 2e-3/3e-3 x rf 16, lr 2e-3 x rf 8"}}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategy", choices=sorted(HAND_TUNED), default="pfeiffer")
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=6, help="max epochs per trial (the hand-tuned runs': 6)")
    parser.add_argument("--seed", type=int, default=0, help="the sampler's seed (training: the config's, 42)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=_report.default_out(BENCHMARK))
    parser.add_argument("--studies", nargs="+", choices=("pruned", "full"), default=["pruned", "full"],
                        help="which studies to run; without 'full', the unpruned epoch count is trials x epochs")
    parser.add_argument("--report-only", action="store_true", help="report the studies already in --out")
    args, args.fit = parser.parse_known_args(argv)  # the rest goes to every trial's fit (e.g. limit_train_batches)
    return args


def run_study(args: argparse.Namespace, name: str, pruning: bool) -> dict:
    output = args.out / name
    command = [sys.executable, "-m", "lightning_adapters.cli", "tune",
               "--config", "configs/finance_sentiment/phrasebank.yaml",
               "--model.init_args.strategy", f"configs/strategy/bottleneck_{args.strategy}.yaml",
               "--search", "configs/search/bottleneck.yaml", "--n-trials", str(args.trials), "--study", name,
               "--output", str(output), "--seed", str(args.seed), "--trainer.max_epochs", str(args.epochs),
               "--trainer.enable_progress_bar", "false", "--test_after_fit", "true",
               *([] if pruning else ["--no-pruning"]), *args.fit]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    with open(args.out / f"{name}.log", "w") as log:
        subprocess.run(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    ran = {"wall_s": time.perf_counter() - start,
           "command": " ".join(command[2:]).replace("lightning_adapters.cli", "lightning-adapters", 1)}
    (output / "bench.json").write_text(json.dumps(ran) + "\n")
    return read_study(args, name)


def read_study(args: argparse.Namespace, name: str) -> dict:
    output = args.out / name
    return json.loads((output / "summary.json").read_text()) | json.loads((output / "bench.json").read_text())


def trials_of(output: Path, name: str) -> list[dict]:
    """The study's trials in the order they ran (one worker): state, epochs, validation value, test accuracy."""
    import optuna

    study = optuna.load_study(study_name=name, storage=f"sqlite:///{output / 'study.db'}")
    return [{"number": t.number, "state": t.state.name, "epochs": t.user_attrs.get("epochs", 0), "value": t.value,
             "test": (t.user_attrs.get("test") or {}).get("test_accuracy"), "params": t.params}
            for t in sorted(study.get_trials(), key=lambda t: t.number)]


def within_budget(trials: list[dict], epochs: int) -> tuple[dict | None, int]:
    """The best complete trial among those that ran before the study had trained ``epochs`` epochs, and the epochs
    those trials took: what the study gives when it is stopped at that budget (later trials cannot change what
    earlier ones were)."""
    spent, kept = 0, []
    for trial in trials:
        if spent + trial["epochs"] > epochs:
            break
        spent += trial["epochs"]
        if trial["state"] == "COMPLETE":
            kept.append(trial)
    return (max(kept, key=lambda t: t["value"]) if kept else None), spent


def percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def short(params: dict) -> str:
    return ", ".join(f"{key.rsplit('.', 1)[-1]} {value:.3g}" for key, value in params.items())


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    _report.setup_runtime(args.threads)  # the trials' thread count, which the setup line reports
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        for name in args.studies:  # a fresh study each run: the old one would be resumed
            for stale in (args.out / name).glob("study.db"):
                stale.unlink()
            run_study(args, name, name == "pruned")
    studies = {name: read_study(args, name) for name in args.studies}
    trials = {name: trials_of(args.out / name, name) for name in studies}
    # Without pruning (and no EarlyStopping in the config) every trial trains the full max_epochs.
    unpruned = studies["full"]["epochs"] if "full" in studies else args.trials * args.epochs
    hand = HAND_TUNED[args.strategy]
    setup = (f"{args.strategy} bottleneck, configs/search/bottleneck.yaml, {args.trials} trials of at most "
             f"{args.epochs} epochs, sampler seed {args.seed}, training seed 42; {_report.hardware()}; "
             f"{_report.versions()}")
    records, rows = [], []
    candidates = [(name, "whole study", studies[name].get("best") and
                   next(t for t in trials[name] if t["number"] == studies[name]["best"]["trial"]),
                   studies[name]["epochs"]) for name in studies]
    candidates += [(name, f"first {hand['epochs']} epochs", *within_budget(trials[name], hand["epochs"]))
                   for name in studies]
    for name, scope, best, spent in candidates:
        method = f"tune, {'median pruning' if name == 'pruned' else 'no pruning'}"
        test = best and best["test"]
        for metric, value, unit in (("epochs trained", spent, "epochs"),
                                    ("best val macro-F1", best and round(100 * best["value"], 2), "%"),
                                    ("its test accuracy", test and round(100 * test, 2), "%")):
            records.append(_report.record(BENCHMARK, TASK, f"{method} ({scope})", metric, value, unit, setup))
        states = [t["state"] for t in trials[name]]
        rows.append([method, scope, spent, f"{states.count('COMPLETE')} / {states.count('PRUNED')}",
                     f"{100 * best['value']:.2f}" if best else "–", f"{100 * test:.2f}" if test else "–",
                     f"{best['number']}: {short(best['params'])}" if best else "–",
                     f"{studies[name]['wall_s'] / 60:.0f}" if scope == "whole study" else ""])
    rows.append([f"hand-tuned grid ({hand['grid']})", "", hand["epochs"], "3 / 0", "–",
                 f"{hand['test_accuracy']:.2f}", "README accuracy table", ""])
    saved = 1 - studies["pruned"]["epochs"] / unpruned
    records.append(_report.record(BENCHMARK, TASK, "tune", "epochs saved by pruning", round(100 * saved, 1), "%",
                                  setup))
    budgeted = within_budget(trials["pruned"], hand["epochs"])[0]
    checks = [
        _report.check_line("pruning saves >= 30 % of epochs", saved >= 0.30,
                           f"{studies['pruned']['epochs']} vs {unpruned} epochs ({100 * saved:.0f} %)"
                           + ("" if "full" in studies else f"; unpruned: {args.trials} trials x {args.epochs} "
                              "epochs, as the config has no early stopping (that study was not run)")),
        _report.check_line(f"pruned study, stopped at the hand-tuned compute ({hand['epochs']} epochs): its best "
                           "trial's test accuracy >= hand-tuned", bool(budgeted and budgeted["test"] and
                                                                      100 * budgeted["test"] >= hand["test_accuracy"]),
                           f"{100 * (budgeted and budgeted['test'] or 0):.2f} vs {hand['test_accuracy']:.2f}")]
    per_trial = "\n".join(f"- {name} trial {t['number']}: {t['state'].lower()}, {t['epochs']} epochs, val "
                          f"{percent(t['value'])}{' (at pruning)' if t['state'] == 'PRUNED' else ''}, test "
                          f"{percent(t['test'])}, {short(t['params'])}" for name in trials for t in trials[name])
    table = _report.markdown_table(["study", "scope", "epochs trained", "trials complete / pruned",
                                    "best val macro-F1 %", "its test acc %", "best trial: values", "wall min"], rows)
    text = (f"# tune: {TASK}\n\n{table}\n\n" + "\n".join(checks) + f"\n\nSetup: {setup}.\n\nTrials (test "
            f"accuracy shown, never used to choose):\n{per_trial}\n\nCommands:\n"
            + "".join(f"- `{summary['command']}`\n" for summary in studies.values())
            + f"\nMade by `python recipes/benchmark/tune.py {' '.join(argv if argv is not None else sys.argv[1:])}`\n")
    _report.write_json(args.out, records)
    (args.out / "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
