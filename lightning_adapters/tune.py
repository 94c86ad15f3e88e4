"""``lightning-adapters tune``: hyper-parameter search over any ``fit`` option, on Optuna.

A trial is one ``fit`` run: the user's own ``fit`` arguments plus one ``--<key>=<value>`` per searched key, in a run
folder of its own (``<output>/trials/<number>/``, its best adapter in ``adapter/`` there), judged by the validation
metric its `BestCheckpoint` keeps (the task head's, `AdapterModule.monitor`): the trial's value is that metric's best
validation value, so it is the score of the adapter the trial exported. Optuna's TPE sampler proposes the values;
its pruner stops a trial whose per-epoch validation metric lags the others (optuna-integration's
``PyTorchLightningPruningCallback``, reporting once per validation).

The study lives in an Optuna storage: by default a SQLite file in the output folder, so a study killed (Ctrl-C,
``kill -9``, a SLURM preemption) resumes where it stopped when the same command runs again. Trials of a killed
process are failed once their heartbeat is stale and run again with the same values
(`optuna.storages.RetryHeartbeatStaleTrialCallback`; RDB storages only: Optuna's journal storage has no heartbeat,
there a killed trial stays ``RUNNING`` and others take its place). ``--n-trials N`` counts the study's finished
(complete or pruned) trials, whichever process ran them, so several workers sharing one storage (a database URL, or
``journal:FILE`` on a shared file system) finish one study of N trials between them.

When the study has its trials, the best one's adapter is copied to ``<output>/best_adapter/`` and a summary is
written: ``summary.json`` (best value, values and trial; counts; epochs run), ``trials.csv`` (Optuna's table) and
plots (optimisation history, parameter importances).

The search space is a YAML file (`read_search_space`; examples in ``configs/search/``)::

    params:                                        # any key fit accepts, as on its command line
      model.init_args.learning_rate: {low: 1.0e-4, high: 1.0e-2, log: true}
      model.init_args.strategy.init_args.r: {choices: [4, 8, 16]}
      trainer.max_epochs: {low: 2, high: 6}        # int when the bounds are
    sampler: {n_startup_trials: 5}                 # TPESampler options (the seed is --seed)
    pruner: {type: median, n_startup_trials: 3, n_warmup_steps: 1}   # median | percentile | hyperband |
                                                            # successive_halving | threshold | none: Optuna's
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import yaml
from lightning.pytorch.cli import instantiate_class

from lightning_adapters.adapter_folder import ADAPTER_FILES
from lightning_adapters.atomic import atomic_write, replace_folder
from lightning_adapters.errors import UserInputError, first_line
from lightning_adapters.heads import ClassificationHead, TaskHead
from lightning_adapters.lightning_cli import AdaptersCLI, build_cli, cli_error_line
from lightning_adapters.module import judged_by

try:  # the `tune` extra; without it the rest of the package works and `tune` says what to install
    import optuna
    from optuna_integration import PyTorchLightningPruningCallback
except ImportError:
    optuna = None
    PyTorchLightningPruningCallback = object

PARAM_FIELDS = {"type", "low", "high", "step", "log", "choices"}
KINDS = ("float", "int", "categorical")
SPACE_FIELDS = {"params", "sampler", "pruner"}
PRUNERS = {"median": "MedianPruner", "percentile": "PercentilePruner", "hyperband": "HyperbandPruner",
           "successive_halving": "SuccessiveHalvingPruner", "threshold": "ThresholdPruner", "none": "NopPruner"}
FINISHED = ("COMPLETE", "PRUNED")


def require_optuna() -> None:
    """Optuna, its Lightning integration and matplotlib (the plots), checked before any trial runs."""
    if optuna is None or importlib.util.find_spec("matplotlib") is None:
        raise UserInputError("tune needs Optuna, which is not installed — pip install 'lightning-adapters[tune]'")


# ---- the search space -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Param:
    """One searched key: a float or int range (``log``, ``step``), or a list of ``choices`` (any YAML values)."""

    key: str
    kind: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: tuple = ()

    def suggest(self, trial) -> Any:
        if self.kind == "categorical":  # Optuna stores str/int/float/bool/None: other values travel as JSON text
            return trial.suggest_categorical(self.key, [as_choice(choice) for choice in self.choices])
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def example(self) -> Any:
        """A value of the space (checks the key against fit's parser before any trial)."""
        return as_choice(self.choices[0]) if self.kind == "categorical" else self.low


@dataclass(frozen=True)
class SearchSpace:
    params: tuple[Param, ...]
    sampler: dict = field(default_factory=dict)
    pruner: dict = field(default_factory=lambda: {"type": "median"})

    def overrides(self, values: dict[str, Any]) -> list[str]:
        """``values`` (by key) as fit arguments."""
        return [f"--{param.key}={as_argument(values[param.key])}" for param in self.params]


def as_choice(value: Any) -> Any:
    return value if value is None or isinstance(value, str | int | float | bool) else json.dumps(value)


def as_argument(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)


def read_search_space(path: str | Path) -> SearchSpace:
    """The search space in YAML file ``path``; anything wrong with it is one line naming the file and the key."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as err:
        raise UserInputError(f"cannot read the search space '{path}' ({err.strerror}) — pass an existing YAML file "
                             "(examples: configs/search/)") from err
    except yaml.YAMLError as err:
        raise UserInputError(f"the search space '{path}' is not valid YAML ({first_line(err)}) — fix it") from err
    where = f"search space '{path}'"
    if not isinstance(raw, dict) or not isinstance(raw.get("params"), dict) or not raw["params"]:
        raise UserInputError(f"{where} has no 'params' mapping — list the keys to search under params: (see "
                             "configs/search/)")
    unknown = sorted(set(raw) - SPACE_FIELDS)
    if unknown:
        raise UserInputError(f"{where}: unknown field '{unknown[0]}' — use {', '.join(sorted(SPACE_FIELDS))}")
    params = tuple(read_param(str(key), spec, where) for key, spec in raw["params"].items())
    sampler, pruner = raw.get("sampler") or {}, raw.get("pruner") or {"type": "median"}
    if not isinstance(sampler, dict) or not isinstance(pruner, dict):
        raise UserInputError(f"{where}: 'sampler' and 'pruner' must be mappings of options — e.g. pruner: "
                             "{type: median}")
    if pruner.get("type", "median") not in PRUNERS:
        raise UserInputError(f"{where}: unknown pruner type '{pruner.get('type')}' — use one of {', '.join(PRUNERS)}")
    return SearchSpace(params, sampler, pruner)


def read_param(key: str, spec: Any, where: str) -> Param:
    at = f"{where}, key '{key}'"
    if key.startswith("-") or not key:
        raise UserInputError(f"{at}: write the key without dashes, as in a config (e.g. model.init_args.learning_rate)")
    if not isinstance(spec, dict):
        raise UserInputError(f"{at}: give a range {{low: .., high: ..}} or {{choices: [..]}}, not {spec!r:.60}")
    unknown = sorted(set(spec) - PARAM_FIELDS)
    if unknown:
        raise UserInputError(f"{at}: unknown field '{unknown[0]}' — use {', '.join(sorted(PARAM_FIELDS))}")
    kind = spec.get("type") or ("categorical" if "choices" in spec else
                                "int" if all(isinstance(spec.get(name, 1), int) and not isinstance(
                                    spec.get(name, 1), bool) for name in ("low", "high", "step")) else "float")
    if kind not in KINDS:
        raise UserInputError(f"{at}: unknown type '{kind}' — use one of {', '.join(KINDS)}")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise UserInputError(f"{at}: 'choices' is empty or not a list — give at least one value")
        return Param(key, kind, choices=tuple(choices))
    low, high, step, log = spec.get("low"), spec.get("high"), spec.get("step"), spec.get("log", False)
    numbers = [value for value in (low, high, step) if value is not None]
    if low is None or high is None or not all(isinstance(v, int | float) and not isinstance(v, bool) and
                                              math.isfinite(v) for v in numbers):
        raise UserInputError(f"{at}: a range needs numbers 'low' and 'high' — e.g. {{low: 1.0e-4, high: 1.0e-2}}")
    if not low < high:
        raise UserInputError(f"{at}: the range is empty (low {low} is not below high {high}) — give low < high, or "
                             "fix the key in the config instead of searching it")
    if log and low <= 0:
        raise UserInputError(f"{at}: a log range needs low > 0, got {low} — raise low or drop log")
    if log and step is not None:
        raise UserInputError(f"{at}: 'step' and 'log' do not go together — drop one")
    if step is not None and step <= 0:
        raise UserInputError(f"{at}: step must be above 0, got {step}")
    return Param(key, kind, low=low, high=high, step=step, log=bool(log))


# ---- the fit command behind each trial ----------------------------------------------------------------------------
class _Parsed(Exception):  # noqa: N818 — a signal, not an error: carries the parsed config out of the CLI
    def __init__(self, config) -> None:
        super().__init__("parsed")
        self.config = config


class ParseOnly(AdaptersCLI):
    """Parses and checks fit's arguments as ``fit`` would, and stops before any class is built."""

    def before_instantiate_classes(self) -> None:
        super().before_instantiate_classes()
        raise _Parsed(self.config[self.subcommand])


def parse_fit(fit_args: list[str], space: SearchSpace):
    """The fit configuration ``fit_args`` give with a value of every searched key: bad fit arguments, and searched
    keys fit does not accept, are refused here in one line, before a study is made."""
    argv = ["fit", *fit_args, *space.overrides({param.key: param.example() for param in space.params})]
    try:
        build_cli(argv, ParseOnly)
    except _Parsed as parsed:
        return parsed.config
    except Exception as err:  # noqa: BLE001 — re-raised below unless it is bad user input
        line = cli_error_line(err, argv)
        if line is None:
            raise
        keys = [param.key for param in space.params  # jsonargparse names the key, or its last part, quoted
                if f"--{param.key}" in line or f"'{param.key.rsplit('.', 1)[-1]}'" in line]
        raise UserInputError(f"search space key '{keys[0]}': {line}" if keys else line) from None
    raise AssertionError("ParseOnly stops before instantiation")  # pragma: no cover


def config_judged_by(config) -> tuple[str, str]:
    """The metric and direction a trial is judged by: those the run's `BestCheckpoint` watches — its own
    ``monitor``/``mode`` when the config gives them, else the task head's (`AdapterModule.monitor`)."""
    for callback in config.trainer.get("callbacks") or []:
        args = callback.get("init_args") or {}
        if str(callback.get("class_path", "")).endswith(".BestCheckpoint") and args.get("monitor"):
            return args["monitor"], args.get("mode") or "min"
    init = config.model.init_args
    head = init.get("head")
    head = ClassificationHead() if head is None else instantiate_class((), head.as_dict())
    if not isinstance(head, TaskHead):
        raise UserInputError(f"model.init_args.head is a {type(head).__name__}, not a TaskHead — fix the config")
    return judged_by(head, several=bool(init.get("tasks")))  # tasks: more adapters train beside the module's own


class TrialRecord(L.Callback):
    """Keeps a trial's validations of ``metric``: its best value, and how many epochs it trained."""

    def __init__(self, metric: str, mode: str) -> None:
        self.metric, self.mode, self.values, self.epochs = metric, mode, [], 0

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.metric)
        if value is not None:
            self.values.append(float(value))
        self.epochs = max(self.epochs, trainer.current_epoch + 1)

    @property
    def best(self) -> float | None:
        finite = [value for value in self.values if math.isfinite(value)]
        return (max if self.mode == "max" else min)(finite) if finite else None


def objective(space: SearchSpace, fit_args: list[str], output: Path, metric: str, mode: str
              ) -> Callable[[Any], float]:
    def run(trial) -> float:
        values = {param.key: param.suggest(trial) for param in space.params}
        folder = output / "trials" / str(trial.number)
        argv = ["fit", *fit_args, *space.overrides(values), f"--trainer.default_root_dir={folder}",
                f"--export_dir={folder / 'adapter'}"]
        record = TrialRecord(metric, mode)
        trial.set_user_attr("run_folder", str(folder))
        try:
            cli = build_cli(argv, extra_callbacks=[record, PyTorchLightningPruningCallback(trial, metric)])
        finally:
            trial.set_user_attr("epochs", record.epochs)
        if record.best is None:
            raise UserInputError(f"trial {trial.number} ended without a finite validation {metric} — let every "
                                 "trial validate (limit_val_batches, val_check_interval, max_steps)")
        trial.set_user_attr("adapter", str(folder / "adapter"))
        trial.set_user_attr("checkpoint", cli.trainer.checkpoint_callback.best_model_path or "")
        tested = {name: round(float(value), 6) for name, value in cli.trainer.callback_metrics.items()
                  if name.startswith("test_") and value.numel() == 1}
        if tested:  # --test_after_fit true: the best checkpoint's test metrics, shown, never used to choose
            trial.set_user_attr("test", tested)
        return record.best

    return run


# ---- the study ------------------------------------------------------------------------------------------------------
def storage_url(url: str) -> str:
    """``url`` with any password masked, for messages."""
    try:
        from sqlalchemy.engine import make_url  # Optuna's dependency: present with it

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 — not a database URL: shown as given
        return url


def open_storage(url: str, heartbeat: int):
    """An Optuna storage: ``journal:FILE`` (journal file), else a database URL (``sqlite:///FILE``,
    ``postgresql://...``) with a heartbeat every ``heartbeat`` seconds, so that a killed process's trials are
    failed and retried. One that cannot be opened is one line."""
    require_optuna()
    shown = storage_url(url)
    try:
        if url.startswith("journal:"):
            from optuna.storages.journal import JournalFileBackend, JournalStorage

            path = Path(url.removeprefix("journal:"))
            if not path.parent.is_dir():
                raise FileNotFoundError(f"no folder '{path.parent}'")
            return JournalStorage(JournalFileBackend(str(path)))
        if url.startswith("sqlite:///"):
            folder = Path(url.removeprefix("sqlite:///")).parent
            if not folder.is_dir():
                raise FileNotFoundError(f"no folder '{folder}'")
        return optuna.storages.RDBStorage(
            url, heartbeat_interval=heartbeat, grace_period=2 * heartbeat,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3))
    except Exception as err:  # noqa: BLE001 — SQLAlchemy's and the drivers' errors have no common base
        raise UserInputError(f"cannot open the study storage '{shown}' ({first_line(err)[:160]}) — give "
                             "sqlite:///FILE in an existing folder, a reachable database URL, or journal:FILE"
                             ) from None


def make_study(name: str, storage, space: SearchSpace, seed: int, direction: str, pruning: bool,
               fit_args: list[str], metric: str):
    """The study ``name`` in ``storage``, made or resumed; resuming with another search space, other fit options or
    another metric is refused (its trials would not compare)."""
    sampler = optuna.samplers.TPESampler(seed=seed, **space.sampler)
    options = dict(space.pruner)
    kind = options.pop("type", "median") if pruning else "none"
    pruner = getattr(optuna.pruners, PRUNERS[kind])(**({} if kind == "none" else options))
    study = optuna.create_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner,
                                direction="maximize" if direction == "max" else "minimize", load_if_exists=True)
    made_with = {"params": [vars(param) | {"choices": list(param.choices)} for param in space.params],
                 "fit_args": fit_args, "metric": metric}
    recorded = study.user_attrs.get("made_with")
    if recorded is None:
        study.set_user_attr("made_with", made_with)
    elif json.loads(json.dumps(made_with)) != recorded:
        differs = next(key for key in made_with if json.loads(json.dumps(made_with[key])) != recorded.get(key))
        raise UserInputError(f"study '{name}' was started with other {differs.replace('_', ' ')} — resume it with "
                             "the same options, or start a new one with --study NAME")
    return study


def finished(study) -> int:
    return sum(trial.state.name in FINISHED for trial in study.get_trials(deepcopy=False))


def run_study(study, space: SearchSpace, fit_args: list[str], output: Path, n_trials: int, metric: str,
              mode: str) -> None:
    """Run trials until the study has ``n_trials`` finished ones (across every process sharing it)."""
    if finished(study) >= n_trials:
        return
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # a trial's own fit output says what happens
    stop = optuna.study.MaxTrialsCallback(n_trials, states=tuple(optuna.trial.TrialState[s] for s in FINISHED))
    study.optimize(objective(space, fit_args, output, metric, mode), callbacks=[stop], gc_after_trial=True)


# ---- what a study leaves ---------------------------------------------------------------------------------------------
def write_summary(study, output: Path, metric: str) -> dict[str, Any]:
    """``summary.json``, ``trials.csv``, the plots and ``best_adapter/`` (a copy of the best trial's adapter)."""
    trials = study.get_trials(deepcopy=False)
    counts = {state: sum(trial.state.name == state for trial in trials) for state in
              ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")}
    summary: dict[str, Any] = {"study": study.study_name, "metric": metric, "direction": study.direction.name.lower(),
                               "trials": counts, "epochs": sum(int(t.user_attrs.get("epochs", 0)) for t in trials)}
    complete = [trial for trial in trials if trial.state.name == "COMPLETE"]
    if complete:
        best = study.best_trial
        summary["best"] = {"trial": best.number, "value": best.value, "params": best.params,
                           "epochs": best.user_attrs.get("epochs"), "test": best.user_attrs.get("test"),
                           "run_folder": best.user_attrs.get("run_folder"),
                           "checkpoint": best.user_attrs.get("checkpoint")}
        source = Path(best.user_attrs["adapter"])
        target = output / "best_adapter"
        replace_folder(target, lambda tmp: [shutil.copy2(file, tmp / file.name) for file in source.iterdir()
                                            if file.name in ADAPTER_FILES], ADAPTER_FILES)
        summary["best"]["adapter"] = str(target)
    atomic_write(output / "summary.json", lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=2) + "\n"))
    table = study.trials_dataframe(attrs=("number", "state", "value", "params", "user_attrs", "duration"))
    atomic_write(output / "trials.csv", lambda tmp: table.to_csv(tmp, index=False))
    summary["plots"] = write_plots(study, output, metric, len(complete))
    return summary


def write_plots(study, output: Path, metric: str, complete: int) -> list[str]:
    """The optimisation history and (with two complete trials or more) the parameters' importances, as PNG files."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display
    import matplotlib.pyplot as plt
    from optuna.visualization.matplotlib import plot_optimization_history, plot_param_importances

    written = []
    plots = {"history.png": plot_optimization_history}
    if complete >= 2 and len(study.best_trial.params) > 0:
        plots["importances.png"] = plot_param_importances
    for name, plot in plots.items():
        try:
            axes = plot(study, target_name=metric)
        except (ValueError, RuntimeError) as err:  # e.g. importances of parameters that never varied
            print(f"tune: {name} not drawn ({first_line(err)})")
            continue
        figure = axes.figure if hasattr(axes, "figure") else axes[0].figure
        figure.tight_layout()
        atomic_write(output / name, lambda tmp, figure=figure: figure.savefig(tmp, format="png", dpi=120))
        plt.close(figure)
        written.append(str(output / name))
    return written
