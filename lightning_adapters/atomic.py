"""Atomic file writes: whoever reads the file — a resumed run, `fit --ckpt_path last`, a user — sees the old version
or the new one, never a truncated one.

The new content goes to a temporary file in the SAME folder, is flushed to disk (fsync), then renamed over the target
(``os.replace``, atomic within one filesystem), and the folder entry is synced. Lightning's own checkpoint writer
stages the file in ``$TMPDIR`` instead, which on clusters is often another filesystem (local disk or tmpfs vs shared
scratch): there the final move degrades to a copy, and a job killed mid-copy (SLURM time limit, preemption, OOM
killer) leaves a truncated ``last.ckpt`` that the requeued job then fails to load.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO


def atomic_write(target: str | os.PathLike, write: Callable[[str], Any]) -> None:
    """Call ``write(temporary_path)``, then make the result appear at ``target`` in one step."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        write(tmp)
        with open(tmp, "rb+") as written:
            os.fsync(written.fileno())  # the bytes reach the disk before the rename makes them visible
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; the result should be an ordinary file
        os.replace(tmp, target)
        _fsync_folder(target.parent)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms/filesystems cannot open a folder: the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO that writes local checkpoints with `atomic_write` (remote URLs: Lightning's writer).

    The CLI installs it when no other CheckpointIO is configured; in your own Trainer:
    ``Trainer(plugins=[AtomicCheckpointIO()])``.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if "://" in str(path) or storage_options is not None:
            super().save_checkpoint(checkpoint, path, storage_options)  # remote filesystems have their own semantics
            return
        atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))
