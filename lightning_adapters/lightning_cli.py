"""``lightning-adapters fit|validate|test|predict --config ...``: LightningCLI wired for adapters (the command's
entry point, which also dispatches ``export``, ``serve`` and ``tune``, is `lightning_adapters.cli`).

The DataModule reaches the model only through links: the backbone name picks the tokenizer, and the label names the
DataModule found become the model's (no model ever reads ``trainer.datamodule``). After ``fit`` the best checkpoint's
adapter is exported as a safetensors folder and, with ``--test_after_fit true``, tested. Checkpoints are written
atomically (`AtomicCheckpointIO`) unless the config names its own CheckpointIO plugin.

Outputs follow Lightning's layout: everything a run writes (config, metrics, checkpoints, the exported adapter,
predictions) goes to its logger's versioned folder — with the default logger
``<default_root_dir>/lightning_logs/version_N/``, so a second run never overwrites the first. ``fit --ckpt_path last``
resumes the newest version that has a ``last.ckpt`` and keeps writing into it.
"""

from __future__ import annotations

import pickle
import re
import signal
import sys
import zipfile
from argparse import ArgumentError
from pathlib import Path

import lightning as L
import torch
import transformers
from jsonargparse import DefaultHelpFormatter
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException

from lightning_adapters.adapter_folder import ADAPTER_FILES, save_adapter
from lightning_adapters.atomic import AtomicCheckpointIO, check_can_create, check_replaceable
from lightning_adapters.errors import UserInputError, first_line
from lightning_adapters.heads import ClassificationHead
from lightning_adapters.heads.base import check_head_fits_data as check_fits
from lightning_adapters.module import CHECKPOINT_KEY, AdapterModule
from lightning_adapters.progress import LineProgress

OVERVIEW = """\
Parameter-efficient fine-tuning of Hugging Face models under PyTorch Lightning.

  lightning-adapters fit|validate|test|predict --config FILE [--key value ...]
  lightning-adapters export --adapter DIR --merged OUT | --onnx OUT.onnx   (see export --help)
  lightning-adapters serve --adapters NAME=DIR [NAME=DIR ...] [--port N]    (see serve --help)
  lightning-adapters tune --config FILE --search SPACE.yaml --n-trials N     (see tune --help)
  lightning-adapters place --config FILE --budget K                         (see place --help)

Options of ours first (the full list below also holds every Trainer flag):
  --config FILE                    a shipped experiment, e.g. configs/finance_sentiment/bottleneck.yaml
  --model.init_args.strategy FILE  switch the method: configs/strategy/{lora,ia3,prompt,prefix,bottleneck_*}.yaml
  --model.help CLASS               the options of a class, e.g. --model.help lightning_adapters.AdapterModule
  --model.init_args.head.help CLASS, --model.init_args.strategy.help CLASS   options of a head or strategy
  --data.help CLASS                the options of a pack, e.g.
                                   --data.help lightning_adapters.tasks.finance_sentiment.FinanceSentimentDataModule
  --data.init_args.data_dir DIR    real data (shipped configs read $LIGHTNING_ADAPTERS_DATA/<dataset>)
  --data.init_args.predict_file F  predict on your own file (predict writes JSONL rows)
  --trainer.default_root_dir DIR   where runs go: DIR/lightning_logs/version_N/ (checkpoints, adapter/, predictions)
                                   logs: metrics.csv; TensorBoard event files instead once tensorboard is installed
  --ckpt_path last|FILE            fit: resume (last = the newest run's last.ckpt); test/predict: the weights to use
  --export_dir DIR                 fit: where to write the best adapter (default: <run folder>/adapter)
  --test_after_fit true            fit: test the best checkpoint when training ends
  --print_config                   print the resolved configuration and exit
"""


class _OverviewFormatter(DefaultHelpFormatter):
    """Keeps the overview's line breaks (argparse would re-flow it into one paragraph)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "".join(indent + line for line in text.splitlines(keepends=True))


# What every run's Trainer gets unless its config says otherwise. A config's `trainer.callbacks` replaces this list,
# as in Lightning; `trainer.callbacks+` (a config key or a flag) appends to it. BestCheckpoint watches the head's own
# metric, so one block fits every task; the second checkpoint keeps last.ckpt current for `--ckpt_path last`.
TRAINER_DEFAULTS = {
    "accelerator": "auto",
    "devices": 1,
    "callbacks": [
        {"class_path": "lightning_adapters.BestCheckpoint"},
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"filename": "latest-{epoch}-{step}", "save_last": True}},
        {"class_path": "lightning_adapters.JsonlPredictionWriter"},
    ],
}


class AdaptersCLI(LightningCLI):
    """LightningCLI for `AdapterModule` (see the module docstring). ``extra_callbacks``: callback objects added to the
    trainer besides the configured ones (`lightning_adapters.tune` adds its trial's pruning callback)."""

    def __init__(self, *args, extra_callbacks: list[L.Callback] = (), **kwargs) -> None:
        self.extra_callbacks = list(extra_callbacks)
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # Parser defaults, not LightningCLI's trainer_defaults: those callbacks could not be replaced from a config.
        parser.set_defaults({f"trainer.{key}": value for key, value in TRAINER_DEFAULTS.items()})
        parser.link_arguments("model.init_args.backbone", "data.init_args.tokenizer")
        parser.link_arguments("data.label_names", "model.init_args.label_names", apply_on="instantiate")
        parser.link_arguments("data.label_counts", "model.init_args.label_counts", apply_on="instantiate")
        parser.link_arguments("data.task_labels", "model.init_args.task_labels", apply_on="instantiate")
        parser.add_argument("--export_dir", type=str | None, default=None,
                            help="fit: where to write the best adapter folder (default: <log_dir>/adapter)")
        parser.add_argument("--test_after_fit", type=bool, default=False,
                            help="fit: test the best checkpoint when training ends")

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        super().parse_arguments(parser, args)
        command = self.config.get("subcommand")
        if command:  # before Lightning reads the checkpoint's hyper-parameters (a traceback on a missing file)
            check_ckpt_path(self.config[command].get("ckpt_path"))

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except SystemExit as stop:  # Lightning ends a Ctrl-C'd run with exit(1) after its graceful shutdown
            if stop.code == 1 and self.trainer.interrupted:
                raise KeyboardInterrupt from stop
            raise

    def before_instantiate_classes(self) -> None:
        if not sys.stderr.isatty():  # transformers' weight-loading bar, redrawn in place, garbles a log file
            transformers.utils.logging.disable_progress_bar()
        check_head_fits_data(self.config[self.subcommand] if self.subcommand else self.config)

    def instantiate_trainer(self, **kwargs) -> L.Trainer:
        try:
            trainer = super().instantiate_trainer(**kwargs)
        except (ValueError, MisconfigurationException) as err:  # Lightning's refusals of Trainer settings
            first = first_line(err)
            raise UserInputError(f"invalid Trainer setting: {first} — fix the --trainer option it names") from err
        # No CheckpointIO configured (the public property would create the default one): install ours. A user's own
        # plugin — also an explicit TorchCheckpointIO — is kept.
        if trainer.strategy._checkpoint_io is None:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        if str(trainer.precision).startswith("bf16") and isinstance(trainer.accelerator, CPUAccelerator) \
                and not cpu_has_bf16():
            rank_zero_warn(f"precision {trainer.precision} on a CPU without bf16 instructions (avx512_bf16, amx_bf16) "
                           "is emulated and runs several times slower than 32-bit — use --trainer.precision 32 here")
        # Output going to a file (SLURM, CI, nohup): lines instead of Lightning's default bar (rich or tqdm), which
        # redraws in place; a bar the config names itself is kept.
        bar = trainer.progress_bar_callback
        if type(bar) in (TQDMProgressBar, RichProgressBar) and not sys.stderr.isatty():
            trainer.callbacks[trainer.callbacks.index(bar)] = LineProgress()
        trainer.callbacks.extend(self.extra_callbacks)
        return trainer

    def before_fit(self) -> None:
        config, trainer = self.config_init[self.subcommand], self.trainer
        if trainer.max_epochs == 0 or trainer.max_steps == 0 or trainer.limit_train_batches == 0:
            raise UserInputError("max_epochs/max_steps/limit_train_batches 0 trains nothing, and fit would export an "
                                 "untrained adapter — set them to at least 1")
        if trainer.accumulate_grad_batches < 1:
            raise UserInputError(f"accumulate_grad_batches must be at least 1, got {trainer.accumulate_grad_batches} "
                                 "— set --trainer.accumulate_grad_batches 1 (no accumulation) or more")
        self._check_run_folder()
        if config.get("export_dir"):  # refuse an unusable folder now, not after hours of training
            for _, target in export_targets(config["export_dir"], self.model.trained_adapters):
                check_replaceable(target, ADAPTER_FILES)
        self._resolve_last(required=False)  # none found: Lightning warns and starts fresh
        self._check_checkpoint_matches()

    def _check_checkpoint_matches(self) -> None:
        """A checkpoint of another base or strategy is refused before Lightning writes the run's config.yaml (which,
        on resume, would overwrite the earlier run's)."""
        path = self.config_init[self.subcommand].get("ckpt_path")
        if path is None or not Path(path).is_file():
            return
        self.model.check_checkpoint(read_checkpoint(path))

    def before_validate(self) -> None:
        self._check_run_folder()
        self._resolve_last(required=True)
        self._check_checkpoint_matches()

    before_test = before_predict = before_validate

    def _check_run_folder(self) -> None:
        """The run folder (the logger's, else default_root_dir) must be creatable before anything runs."""
        logger = self.trainer.logger
        root = (logger.save_dir if logger is not None and logger.save_dir else None) or self.trainer.default_root_dir
        check_can_create(root, f"the run folder '{root}' (--trainer.default_root_dir)")

    def _resolve_last(self, required: bool) -> None:
        """``--ckpt_path last``: the newest run's ``checkpoints/last.ckpt``, resumed in its own run folder."""
        config = self.config_init[self.subcommand]
        if config.get("ckpt_path") != "last" or self.trainer.logger is None:
            return
        found = newest_last_checkpoint(self.trainer.logger)
        if found is None:
            if required:
                runs = Path(self.trainer.logger.save_dir or ".") / (self.trainer.logger.name or "")
                raise UserInputError(f"--ckpt_path last: no run under '{runs}' has checkpoints/last.ckpt — pass "
                                     "--ckpt_path FILE, or fit first")
            return
        config["ckpt_path"] = str(found[0])
        if self.subcommand == "fit":  # resume that run, in its own folder
            self.trainer.logger._version = found[1]
            print(f"resuming {found[0]}")

    def after_fit(self) -> None:
        trainer, config = self.trainer, self.config_init[self.subcommand]
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        metrics = {}
        if config.get("test_after_fit"):
            results = trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None)
            metrics = {name: round(float(value), 4) for name, value in (results[0] if results else {}).items()}
        elif best:  # Lightning's own restore path: right for every strategy, sharded (FSDP) ones included
            connector = trainer._checkpoint_connector
            connector.resume_start(best)
            connector.restore_model()
            connector.resume_end()
        log_dir = trainer.log_dir  # a broadcast under DDP: every rank asks
        with self.model.full_weights():  # a collective under FSDP: every rank enters, rank 0 writes
            if trainer.is_global_zero:
                folder = Path(config.get("export_dir") or Path(log_dir or ".") / "adapter")
                for name, target in export_targets(folder, self.model.trained_adapters):
                    save_adapter(self.model, target, card=self._card(metrics), name=name)
                    print(f"adapter saved to {target.resolve()}" + (f" (from best checkpoint {best})" if best else ""))
                if log_dir:
                    print(f"run folder: {Path(log_dir).resolve()}")


    def _card(self, metrics: dict[str, float]) -> dict:
        """Model-card fields: the data it was trained on (and where its card is), test metrics, the command."""
        data = type(self.datamodule)
        source = next((f"{key}={getattr(self.datamodule, key)}" for key in ("data_dir", "train_file", "hub_dataset")
                       if getattr(self.datamodule, key, None)), "its bundled sample")
        described = f"`{data.__module__}.{data.__name__}`, {source}"
        if data.__module__.startswith("lightning_adapters.tasks."):
            pack = data.__module__.split(".")[2]
            described += f"; source and license: tasks/{pack}/DATA_CARD.md"
        card = {"data": described, "command": " ".join(["lightning-adapters", *sys.argv[1:]])}
        return card | ({"metrics": metrics} if metrics else {})


def export_targets(folder: str | Path, trained: list[str]) -> list[tuple[str, Path]]:
    """Where fit exports each trained adapter: one adapter, the folder itself; several (multi-task), a folder each
    inside it, named after its adapter."""
    folder = Path(folder)
    return [(name, folder if len(trained) == 1 else folder / name) for name in trained]


def check_head_fits_data(config) -> None:
    """Refuse a head that reads a batch key its data does not produce (``TaskHead.reads`` against the DataModule's
    ``batch_keys``), from the class paths alone: before a backbone or a dataset is loaded. Undeclared: not checked."""
    from jsonargparse import Namespace
    from jsonargparse._util import import_object

    model, data = config.get("model"), config.get("data")
    if not isinstance(model, Namespace) or not isinstance(data, Namespace) or "head" not in model.get("init_args", {}):
        return
    head = model.init_args.head
    head_class = import_object(head.class_path) if head is not None else ClassificationHead  # AdapterModule's default
    data_class = import_object(data.class_path)
    check_fits(head_class, data_class, "pick the head of that data's task (--model.init_args.head) or data for this "
                                       "head (--data)")


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (Linux: its flags); True where that cannot be read (no warning)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def check_ckpt_path(path: str | None) -> None:
    """A checkpoint file that is missing or not a torch checkpoint (truncated, another format): one line, now."""
    if path is None or path in ("last", "best", "hpc", "registry") or "://" in str(path):
        return
    if not Path(path).is_file():
        raise UserInputError(f"checkpoint '{path}' not found — pass an existing .ckpt file (a run's "
                             "checkpoints/last.ckpt) or --ckpt_path last")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; a cut-off one has no central directory
        raise UserInputError(f"checkpoint '{path}' is not a readable torch checkpoint (truncated or another format) "
                             "— pass another checkpoint, e.g. the run's checkpoints/last.ckpt")
    read_checkpoint(path)


def read_checkpoint(path: str | Path) -> dict:
    """A lightning-adapters checkpoint, read without unpickling code (``weights_only``; memory-mapped, so cheap), or
    one line saying why it is not one."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, ValueError, EOFError) as err:
        first = first_line(err, 200)
        raise UserInputError(f"checkpoint '{path}' cannot be read safely ({first}) — pass a checkpoint written by a "
                             "lightning-adapters run") from err
    if not isinstance(checkpoint, dict) or "pytorch-lightning_version" not in checkpoint \
            or CHECKPOINT_KEY not in checkpoint:
        raise UserInputError(f"checkpoint '{path}' was not written by a lightning-adapters run (no Lightning or "
                             "adapter metadata) — pass a run's checkpoints/*.ckpt")
    return checkpoint


def newest_last_checkpoint(logger: Logger) -> tuple[Path, int | str] | None:
    """``(<save_dir>/<name>/version_N/checkpoints/last.ckpt, N)`` for the highest N that has one, else None."""
    runs = Path(logger.save_dir or ".") / (logger.name or "")
    found = []
    for last in runs.glob("*/checkpoints/last.ckpt"):
        number = re.fullmatch(r"version_(\d+)", last.parent.parent.name)
        if number is not None:
            found.append((int(number.group(1)), last))
    if not found:
        return None
    version, last = max(found)
    return last, version


_MAX_YAML_VALUES = 1_000_000


def check_yaml_size(argv: list[str]) -> None:
    """Refuse a YAML file whose aliases expand to more than a million values ("billion laughs"): jsonargparse would
    expand them all, which never ends. Every argument naming a .yaml/.yml file is checked (``--config``, and class
    configs such as ``--model.init_args.strategy configs/strategy/lora.yaml``)."""
    import yaml

    for arg in argv:
        path = Path(arg.split("=", 1)[-1])
        if path.suffix not in (".yaml", ".yml") or not path.is_file():
            continue
        try:
            size = sum(_expanded_size(root, {}) for root in yaml.compose_all(path.read_text()) if root is not None)
        except (yaml.YAMLError, UnicodeDecodeError):
            continue  # the parser reports it, naming the file
        except RecursionError as err:
            raise UserInputError(f"'{path}' nests too deeply to be a config — write it out flat") from err
        if size > _MAX_YAML_VALUES:
            raise UserInputError(f"'{path}' uses YAML aliases that expand to more than {_MAX_YAML_VALUES:,} values — "
                                 "write the config out without nested aliases")


def _expanded_size(node, sizes: dict[int, int]) -> int:
    """Values in ``node`` once its aliases are expanded. An alias shares its anchor's node, so memoising by node keeps
    the count cheap however large the expansion; a recursive alias counts once."""
    import yaml

    if id(node) not in sizes:
        sizes[id(node)] = 1
        if isinstance(node, yaml.MappingNode):
            sizes[id(node)] = 1 + sum(_expanded_size(k, sizes) + _expanded_size(v, sizes) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            sizes[id(node)] = 1 + sum(_expanded_size(item, sizes) for item in node.value)
    return sizes[id(node)]


def run_cli(args: list[str] | None = None) -> AdaptersCLI:
    """Run the CLI and return it; bad input ends with one line on stderr and exit status 2, not a traceback."""
    argv = sys.argv[1:] if args is None else args
    try:
        return build_cli(args)
    except (SIGTERMException, KeyboardInterrupt) as stop:  # Lightning ends a SIGTERM'd run with SystemExit(0):
        name = "SIGTERM" if isinstance(stop, SIGTERMException) else "SIGINT (Ctrl-C)"  # `fit && deploy` went on
        print(f"lightning-adapters: error: stopped by {name} before the run finished; nothing was exported — resume "
              "with --ckpt_path last", file=sys.stderr)
        sys.exit(128 + (signal.SIGTERM if isinstance(stop, SIGTERMException) else signal.SIGINT))
    except Exception as err:  # noqa: BLE001 — re-raised below unless it is bad user input
        line = cli_error_line(err, argv)
        if line is None:
            raise
        print(f"lightning-adapters: error: {line}", file=sys.stderr)
        sys.exit(2)


def build_cli(args: list[str] | None, cli_class: type[AdaptersCLI] = AdaptersCLI, **kwargs) -> AdaptersCLI:
    """Parse ``args`` (None: the command line) and run its subcommand, as LightningCLI does; bad input raises
    (`cli_error_line` says it in one line). ``kwargs`` go to ``cli_class`` (`AdaptersCLI`: ``extra_callbacks``)."""
    check_yaml_size(sys.argv[1:] if args is None else args)
    return cli_class(AdapterModule, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                     args=args, auto_configure_optimizers=False, save_config_kwargs={"overwrite": True},
                     parser_kwargs=parser_kwargs(), **kwargs)


def cli_error_line(err: BaseException, argv: list[str]) -> str | None:
    """The one line that reports bad input behind ``err``, or None where ``err`` is not the user's."""
    if isinstance(err, ArgumentError):  # jsonargparse's report: a usage line, then a nested multi-line explanation
        return parser_error_line(str(err), argv)
    cause = user_input_error(err)
    return None if cause is None else str(cause)


_NOISE = re.compile(r"^(Does not validate against any of the Union subtypes|Subtypes: .*|Errors:|Given value.*|"
                    r"Expected a <class 'NoneType'>|Expected a path but .* either not accessible or invalid)$")


def parser_error_line(message: str, argv: list[str]) -> str:
    """One line from jsonargparse's nested report: the option path (each ``Parser key``), the innermost reason and
    the fix. The report tries every member of each Union; the ``NoneType`` branches only add noise."""
    command = next((arg for arg in argv if arg in ("fit", "validate", "test", "predict")), "<command>")
    if "Problems parsing config" in message:
        return config_error_line(message, argv)
    keys, reason, classes, values = [], "", [], []
    for raw in message.splitlines():
        line = raw.strip().removeprefix("- ").strip()
        value = re.fullmatch(r"Given value: (?:NestedArg\(key='[^']*', val='(.*)'\)|(.*))", line)
        if value:
            values.append(value.group(1) if value.group(1) is not None else value.group(2))
        key = re.match(r'Parser key "([^"]+)":\s*(.*)', line)
        if key:
            keys.append(key.group(1))
            line = key.group(2)
        given = re.fullmatch(r"Problem with given class_path '([^']+)':", line)
        if given:
            classes.append(given.group(1))
        elif line and not _NOISE.match(line):
            reason = line
    where = f"--{'.'.join(keys)}: " if keys else ""
    if values and values[0] not in reason:  # the innermost value comes first
        reason += f" (given: {values[0]})"
    fix = f"see lightning-adapters {command} --help"
    if classes and keys and keys[0] in ("model", "data") and "attribute" not in reason:
        fix += f" (--{keys[0]}.help {classes[0]} lists that class's options)"
    return f"{where}{reason or message.strip().splitlines()[0]} — {fix}"


def config_error_line(message: str, argv: list[str]) -> str:
    """A YAML error names ``<unicode string>``: name the --config file that does not parse instead."""
    import yaml

    detail = " ".join(line.strip() for line in message.replace("Problems parsing config:", "").splitlines())
    for flag, value in zip(argv, argv[1:], strict=False):
        if flag == "--config" and Path(value).is_file():
            try:
                yaml.safe_load(Path(value).read_text())
            except yaml.YAMLError:
                return f"--config {value} is not valid YAML: {detail.replace('<unicode string>', value)} — fix it"
    return f"a --config value is not valid YAML: {detail} — fix it"


def parser_kwargs() -> dict:
    """The overview on top of ``--help`` and of each subcommand's ``--help``; parse errors raise (`run_cli` prints
    them as one line) instead of printing jsonargparse's multi-line report."""
    kwargs = {"description": OVERVIEW, "formatter_class": _OverviewFormatter, "exit_on_error": False}
    commands = {command: {**kwargs, "usage": f"lightning-adapters {command} --config FILE [--key value ...]"}
                for command in ("fit", "validate", "test", "predict")}
    return {**kwargs, **commands}


def user_input_error(err: BaseException | None) -> UserInputError | None:
    """The UserInputError behind ``err``: jsonargparse wraps errors raised while it instantiates classes."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, UserInputError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None
