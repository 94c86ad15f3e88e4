"""Callbacks for the sbatch recipes: requeue at a step boundary, and a last.ckpt in a folder the job owns.

``StepBoundaryRequeue``: Lightning's SLURM auto-requeue, moved to the end of a training step.

Lightning handles ``#SBATCH --signal=SIGUSR1@90`` by saving ``hpc_ckpt_<n>.ckpt`` and running ``scontrol requeue``
*inside the signal handler*, i.e. wherever the main thread is when the signal lands: mid-forward (this step's dropout
masks are already drawn, so the saved RNG state is ahead of the saved weights), between ``backward`` and
``optimizer.step``, or half-way through the optimizer's update. Such a checkpoint cannot resume exactly. Under DDP
every rank gets the signal, possibly at different steps, and the barrier inside ``save_checkpoint`` then meets a
gradient all-reduce on another rank.

This callback only records the signal; at the next ``on_train_batch_end`` the ranks agree (any rank got it) and all
run Lightning's own handler together, at a step boundary. Outside SLURM (or with ``auto_requeue=False``) Lightning
installs no handler and the callback does nothing.
"""

from __future__ import annotations

import signal
from typing import Any

import lightning as L
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import ModelCheckpoint


class StepBoundaryRequeue(L.Callback):
    """Defer the SLURM requeue signal (SIGUSR1 by default) to the end of the current training step."""

    def __init__(self) -> None:
        self._signal: int | None = None
        self._lightning_handler: Any = None
        self._pending = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning registered its handlers just before training started; take over only what it installed.
        environment = trainer._accelerator_connector.cluster_environment
        if not isinstance(environment, SLURMEnvironment) or not environment.auto_requeue:
            return
        handler = signal.getsignal(environment.requeue_signal)
        if callable(handler):
            self._signal, self._lightning_handler = environment.requeue_signal, handler
            signal.signal(self._signal, self._record)

    def _record(self, signum: int, frame: Any) -> None:
        self._pending = True  # nothing else: the handler may run in the middle of any operation

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if self._signal is None:
            return
        # One tiny all-reduce per step: every rank must save at the same step, or the collectives get out of order.
        if trainer.strategy.reduce_boolean_decision(self._pending, all=False):
            self._pending = False
            self._lightning_handler(self._signal, None)  # saves hpc_ckpt_<n>.ckpt, rank 0 runs scontrol requeue

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After the last step there is nothing left to defer to: give the signal back to Lightning.
        if self._signal is not None:
            signal.signal(self._signal, self._lightning_handler)
            self._signal = None


class JobCheckpoint(ModelCheckpoint):
    """A ModelCheckpoint the recipes add to keep ``$RUN_DIR/checkpoints/last.ckpt`` current.

    Only the class name differs: Lightning refuses two ModelCheckpoints whose state keys (class name + settings) are
    equal, and most configs already have a monitor-less one.
    """
