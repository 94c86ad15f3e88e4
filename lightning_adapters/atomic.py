"""Atomic file and folder writes: whoever reads the file — a resumed run, `fit --ckpt_path last`, a user — sees the
old version or the new one, never a truncated one.

The new content goes to a temporary file in the SAME folder, is flushed to disk (fsync), then renamed over the target
(``os.replace``, atomic within one filesystem), and the folder entry is synced. Lightning's own checkpoint writer
stages the file in ``$TMPDIR`` instead, which on clusters is often another filesystem (local disk or tmpfs vs shared
scratch): there the final move degrades to a copy, and a job killed mid-copy (SLURM time limit, preemption, OOM
killer) leaves a truncated ``last.ckpt`` that the requeued job then fails to load.

An adapter folder is several files that must change together (new weights beside the old config would load with the
old label order): `replace_folder` builds the whole new folder beside the old one and swaps it in (see there).
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lightning_adapters.errors import UserInputError


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
    except OSError as err:  # a full disk, a quota, `ulimit -f` (EFBIG): one line, and the old file is untouched
        if err.errno not in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS):
            raise
        raise UserInputError(f"cannot write '{target}' ({err.strerror}) — free disk space or raise the file-size "
                             f"limit (ulimit -f); any earlier '{target.name}' is intact") from err
    except RuntimeError as err:  # torch's C++ writer reports a short write as "unexpected pos", not as an OSError
        if not _out_of_space(Path(tmp)):
            raise
        raise UserInputError(f"cannot write '{target}' (disk full or file-size limit reached) — free disk space or "
                             f"raise the file-size limit (ulimit -f); any earlier '{target.name}' is intact") from err
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _out_of_space(partial: Path) -> bool:
    """Whether a write that stopped at ``partial`` hit the file-size limit (RLIMIT_FSIZE) or a (nearly) full disk."""
    import resource

    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    size = partial.stat().st_size if partial.exists() else 0
    at_limit = limit != resource.RLIM_INFINITY and size + (1 << 20) >= limit
    return at_limit or shutil.disk_usage(partial.parent).free < (1 << 20)


def replace_folder(target: str | os.PathLike, write: Callable[[Path], Any], names: set[str]) -> Path:
    """Call ``write(temporary_folder)``, then make that folder appear at ``target`` as a whole, in one step.

    Why a folder swap rather than a checksum manifest: every reader — ours, PEFT's ``from_pretrained``, a hub
    upload — then sees the old folder or the new one, and a failed save keeps the old adapter loadable. The new
    folder is written, fsynced and given ordinary permissions beside ``target`` (same filesystem), then exchanged
    with it atomically (Linux ``renameat2``); elsewhere the old folder is renamed aside first, a window of two
    renames after which a crash leaves it in ``.<name>.<id>.old`` (`interrupted_save` finds it). Files are never
    written through a symlink: a linked file in the old folder goes away with that folder, its target untouched;
    a symlinked ``target`` folder is replaced where it points. An existing ``target`` may hold only ``names``
    (what a writer of this kind produces), so nothing of the user's is lost.

    Args:
        target: the folder to create or replace.
        write: writes the new folder's files into the folder it is given.
        names: the file names an existing ``target`` may hold.
    """
    target = Path(target).resolve() if Path(target).is_symlink() else Path(target)
    check_replaceable(target, names)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    except OSError as err:  # the new folder is built beside the old one: the parent must be writable
        raise UserInputError(f"cannot write in '{target.parent}' ({err.strerror}) — pick an adapter folder whose "
                             "parent folder you can write to") from err
    try:
        write(tmp)
        _seal(tmp)
        _swap(tmp, target)
        _fsync_folder(target.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the half-written folder, or the old one after an exchange
    return target


def interrupted_save(target: str | os.PathLike) -> Path | None:
    """The previous folder a save left aside when it was killed between its two renames, if any."""
    target = Path(target)
    return next(iter(sorted(target.parent.glob(f".{target.name}.*.old"))), None) if target.parent.is_dir() else None


def check_replaceable(target: str | os.PathLike, names: set[str]) -> None:
    """Refuse, before any work, a ``target`` that `replace_folder` would refuse: a file, or a folder holding more
    than ``names`` (e.g. the CLI's ``--export_dir`` before training starts)."""
    target = Path(target).resolve() if Path(target).is_symlink() else Path(target)
    if target.exists() and not target.is_dir():
        raise UserInputError(f"'{target}' is a file, not a folder — pass a folder path for the adapter")
    others = sorted(p.name for p in target.iterdir() if p.name not in names) if target.is_dir() else []
    if others:
        raise UserInputError(f"'{target}' holds files that are not part of an adapter folder (e.g. '{others[0]}') "
                             "— save into a new or empty folder, or into an adapter folder to replace it")
    check_can_create(target.parent, f"the folder of '{target}'")


def check_can_create(folder: str | os.PathLike, what: str) -> None:
    """Refuse, before any work, a ``folder`` in which nothing could be created: its nearest existing ancestor is a
    file, or creating there fails (read-only, no permission, a pseudo file system). Tried for real — a temporary
    folder made and removed — since ``os.access`` says yes to root on a read-only mount."""
    folder = Path(folder).absolute()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise UserInputError(f"cannot create {what}: '{existing}' is a file — pass a path under a folder")
    try:
        os.rmdir(tempfile.mkdtemp(dir=existing, prefix=".write-check-"))
    except OSError as err:
        raise UserInputError(f"cannot create {what} in '{existing}' ({err.strerror}) — pass a folder you can write "
                             "to") from err


def _seal(folder: Path) -> None:
    """Flush every file to disk and give files and folder the permissions a plain mkdir/open would have."""
    umask = os.umask(0)
    os.umask(umask)
    for path in folder.iterdir():
        with open(path, "rb+") as written:
            os.fsync(written.fileno())
        os.chmod(path, 0o666 & ~umask)
    os.chmod(folder, 0o777 & ~umask)  # mkdtemp creates 0700
    _fsync_folder(folder)


def _swap(new: Path, target: Path) -> None:
    """Put ``new`` at ``target``; an existing ``target`` ends up at ``new`` (exchange) or is removed."""
    if not target.exists():
        os.replace(new, target)
        return
    if _exchange(new, target):
        return
    aside = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.old")
    try:
        os.rename(target, aside)
    except OSError as err:
        raise UserInputError(f"cannot replace '{target}' ({err.strerror}) — save into a new folder") from err
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(aside, target)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step with Linux ``renameat2(RENAME_EXCHANGE)``; False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):  # glibc < 2.28, musl: no wrapper
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


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
