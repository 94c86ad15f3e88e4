"""Progress as plain lines, for runs whose output is a file (SLURM logs, CI, ``nohup``), not a terminal.

tqdm redraws its bar with carriage returns, so a log file holds one unreadable line per refresh. `LineProgress`
prints one line per finished training epoch (training metrics) and one per validation during fitting (validation
metrics), with the values Lightning would show on the bar.
The CLI uses it instead of the bar when standard error is not a terminal.
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ProgressBar


class LineProgress(ProgressBar):
    """One line per training epoch and per validation, e.g. ``epoch 3/20 · step 45 · train_loss 0.41 · 24 s``."""

    def __init__(self) -> None:
        super().__init__()
        self._enabled = True
        self._start = time.monotonic()

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.monotonic()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epochs = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        metrics = {k: v for k, v in self.get_metrics(trainer, pl_module).items() if not k.startswith("val")}
        self._print(trainer, f"epoch {trainer.current_epoch + 1}{epochs}", metrics)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        metrics = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("val")}
        self._print(trainer, "validation", metrics)

    def _print(self, trainer: L.Trainer, what: str, metrics: dict[str, Any]) -> None:
        if not self._enabled or not trainer.is_global_zero:
            return
        shown = [f"{name} {_number(value)}" for name, value in sorted(metrics.items()) if name != "v_num"]
        elapsed = f"{time.monotonic() - self._start:.0f} s"
        print(" · ".join([what, f"step {trainer.global_step}", *shown, elapsed]), flush=True)


def _number(value: Any) -> str:
    value = value.item() if hasattr(value, "item") else value
    return f"{value:.4g}" if isinstance(value, float) else str(value)
