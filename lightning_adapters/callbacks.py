"""Callbacks users put in YAML: JSONL predictions; the best checkpoint and early stopping by the task head's own
validation metric, unless told another; early stopping that survives a run shorter than one validation."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import callbacks
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_warn

from lightning_adapters.errors import UserInputError


class JsonlPredictionWriter(BasePredictionWriter):
    """Write ``predict`` results as JSON Lines, one object per input (e.g. text, label, probabilities).

    Rows are streamed to a temporary file and moved into place when prediction ends, so an interrupted run never
    leaves a truncated file under the final name. With several processes each rank writes ``<name>.rank<k>.jsonl``.

    Args:
        output: path of the JSONL file to write (default: ``predictions.jsonl`` in the run's versioned log folder,
            beside its config and metrics, or in the working folder when the run has no logger).
    """

    def __init__(self, output: str | None = None) -> None:
        super().__init__(write_interval="batch")
        self.output = output
        self._file = None

    def _target(self, trainer) -> Path:
        path = Path(self.output).expanduser() if self.output else Path(trainer.log_dir or ".") / "predictions.jsonl"
        return path.with_suffix(f".rank{trainer.global_rank}.jsonl") if trainer.world_size > 1 else path

    def setup(self, trainer, pl_module, stage: str) -> None:
        """Refuse an unusable output path before any prediction runs (not after the last batch)."""
        if stage == "predict":
            check_output_file(self._target(trainer), "JsonlPredictionWriter output")

    def on_predict_epoch_start(self, trainer, pl_module) -> None:
        target = self._target(trainer)
        target.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(target.with_name(f".{target.name}.partial"), "w", encoding="utf-8")  # noqa: SIM115

    def write_on_batch_end(self, trainer, pl_module, prediction: list[dict[str, Any]], batch_indices, batch,
                           batch_idx: int, dataloader_idx: int) -> None:
        for row in prediction:
            self._file.write(json.dumps(row, ensure_ascii=False) + "\n")

    def on_predict_epoch_end(self, trainer, pl_module) -> None:
        target = self._target(trainer)
        self._file.close()
        try:
            os.replace(self._file.name, target)
        except OSError as err:  # the target changed during the run (e.g. a folder was created there)
            self._discard()
            raise UserInputError(f"cannot write predictions to '{target}' ({err.strerror}) — pass a file path as "
                                 "JsonlPredictionWriter's output") from err
        self._file = None
        print(f"predictions written to {target}")

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._discard()  # a failed run leaves no half-written .partial file behind

    def _discard(self) -> None:
        if self._file is not None:
            self._file.close()
            Path(self._file.name).unlink(missing_ok=True)
            self._file = None


def check_output_file(path: Path, what: str) -> None:
    """Raise unless ``path`` can become a file: not a folder, and no file where one of its folders should be."""
    if path.is_dir():
        raise UserInputError(f"{what} '{path}' is a folder — pass a file path, e.g. '{path / 'predictions.jsonl'}'")
    blocking = next((parent for parent in path.parents if parent.exists() and not parent.is_dir()), None)
    if blocking is not None:
        raise UserInputError(f"{what} '{path}' lies inside '{blocking}', which is a file — pass a path in a folder")


def head_monitor(pl_module) -> tuple[str, str]:
    """The validation metric the module is judged by, and whether higher is better: e.g. ``("val_macro_f1", "max")``
    for classification (`AdapterModule.monitor`, from `TaskHead.monitor`)."""
    return pl_module.monitor()


class BestCheckpoint(callbacks.ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` keeping the best epoch by the task head's validation metric.

    With ``monitor`` unset it watches what the head declares (`TaskHead.monitor`: ``val_macro_f1`` for
    classification, ``val_f1`` for NER and QA, ``val_perplexity`` or ``val_loss`` for generation) in that metric's
    direction, and names files ``best-{epoch}-{step}-{<metric>:.3f}`` (the step tells validations within an epoch
    apart); so one trainer block fits every task. Any
    ``ModelCheckpoint`` argument may be given; a ``monitor`` given is used as is, as Lightning's.
    """

    def __init__(self, monitor: str | None = None, mode: str | None = None, filename: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(monitor=monitor, mode=mode or "min", filename=filename, **kwargs)
        self._mode_given = mode is not None

    def setup(self, trainer, pl_module, stage: str) -> None:
        self._resolve_head_monitor(pl_module)
        super().setup(trainer, pl_module, stage)

    def _resolve_head_monitor(self, pl_module) -> None:
        # Before Lightning restores callback states (after setup): the state key holds the monitor and mode.
        if self.monitor is None:
            self.monitor, mode = head_monitor(pl_module)
            mode = self.mode if self._mode_given else mode
            self.kth_value, self.mode = torch.tensor(torch.inf if mode == "min" else -torch.inf), mode
        if self.filename is None:
            self.filename = f"best-{{epoch}}-{{step}}-{{{self.monitor}:.3f}}"


class EarlyStopping(callbacks.EarlyStopping):
    """Lightning's ``EarlyStopping``, except that ``monitor`` defaults to the task head's validation metric (in its
    direction, as `BestCheckpoint`) and a run which ends before its first validation is not an error.

    ``--trainer.max_steps 3`` (a smoke test) ends training mid-epoch, before any validation; Lightning's callback
    then fails on the missing metric. This one waits for validation to have run, as ``ModelCheckpoint`` does; a
    monitored metric still missing after a validation raises as before (a typo in ``monitor``).
    """

    def __init__(self, monitor: str | None = None, mode: str | None = None, **kwargs: Any) -> None:
        super().__init__(monitor=monitor or "", mode=mode or "min", **kwargs)
        self._monitor_given, self._mode_given = monitor is not None, mode is not None

    def setup(self, trainer, pl_module, stage: str) -> None:
        self._resolve_head_monitor(pl_module)
        super().setup(trainer, pl_module, stage)

    def _resolve_head_monitor(self, pl_module) -> None:
        if not self._monitor_given and not self.monitor:
            self.monitor, mode = head_monitor(pl_module)
            self.mode = self.mode if self._mode_given else mode
            # Lightning signs min_delta and seeds best_score from the mode in __init__: redo both for the head's
            self.min_delta = abs(self.min_delta) * (1 if self.mode == "max" else -1)
            self.best_score = torch.tensor(torch.inf if self.mode == "min" else -torch.inf)

    def _run_early_stopping_check(self, trainer) -> None:
        if self.monitor not in trainer.callback_metrics and not trainer.fit_loop.epoch_loop.val_loop._has_run:
            rank_zero_warn(f"EarlyStopping: no validation has run yet, so '{self.monitor}' is not checked")
            return
        super()._run_early_stopping_check(trainer)
