"""Atomic writes: a crash while writing leaves the previous file intact and no half file; the CLI uses them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from test_cli import workdir, write_config  # noqa: F401 — workdir is a fixture

from lightning_adapters.atomic import AtomicCheckpointIO, atomic_write, check_can_create, check_replaceable
from lightning_adapters.cli import run_cli
from lightning_adapters.errors import UserInputError


class Crash(RuntimeError):
    pass


def half_write_then_crash(path: str) -> None:
    with open(path, "wb") as f:
        f.write(b"PK\x03\x04 half a checkpoint")
    raise Crash("killed mid-write")


def test_crash_mid_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "last.ckpt"
    atomic_write(target, lambda tmp: torch.save({"step": 1}, tmp))
    with pytest.raises(Crash):
        atomic_write(target, half_write_then_crash)
    assert torch.load(target, weights_only=True) == {"step": 1}
    assert os.listdir(tmp_path) == ["last.ckpt"]


def test_checkpoint_io_round_trip_and_crash(tmp_path, monkeypatch):
    io, target = AtomicCheckpointIO(), tmp_path / "ckpts" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "epoch": 4}, target)
    assert io.load_checkpoint(target)["epoch"] == 4
    monkeypatch.setattr(torch, "save", lambda obj, path: half_write_then_crash(path))
    with pytest.raises(Crash):
        io.save_checkpoint({"epoch": 5}, target)
    assert io.load_checkpoint(target)["epoch"] == 4
    assert sorted(os.listdir(target.parent)) == ["last.ckpt"]


def test_written_file_has_ordinary_permissions(tmp_path):
    atomic_write(tmp_path / "f", lambda tmp: open(tmp, "w").close())  # noqa: SIM115
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o666 & ~umask


def test_cli_writes_checkpoints_atomically_unless_a_plugin_is_configured(workdir, model_dirs):  # noqa: F811
    cli = run_cli(["fit", "--config", str(write_config(workdir, model_dirs["bert"], **{"trainer.max_epochs": 1}))])
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    assert (workdir / "ckpt" / "last.ckpt").is_file() and not list((workdir / "ckpt").glob(".*"))
    own = {"class_path": "lightning.pytorch.plugins.io.TorchCheckpointIO"}
    config = write_config(workdir, model_dirs["bert"], **{"trainer.max_epochs": 1, "trainer.plugins": [own]})
    cli = run_cli(["fit", "--config", str(config), "--trainer.default_root_dir", str(workdir / "other")])
    assert type(cli.trainer.strategy.checkpoint_io) is TorchCheckpointIO


@pytest.mark.parametrize(("limit", "write", "message"), [
    (1000, "Path(p).write_bytes(bytes(5000))", "File too large"),  # EFBIG from a plain write
    (1 << 20, "torch.save({'w': torch.zeros(1 << 20)}, p)", "file-size limit reached"),  # torch: "unexpected pos"
], ids=["write", "torch.save"])
def test_a_file_size_limit_mid_write_is_one_line_and_the_old_file_stays(tmp_path, limit, write, message):
    """`ulimit -f` during checkpointing: one line, the old file stays, no temporary file is left."""
    target = tmp_path / "last.ckpt"
    target.write_bytes(b"old checkpoint")
    script = (f"import resource, sys, torch\nfrom pathlib import Path\n"
              f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
              f"from lightning_adapters.atomic import atomic_write\n"
              f"from lightning_adapters.errors import UserInputError\n"
              f"try:\n    atomic_write({str(target)!r}, lambda p: {write})\n"
              f"except UserInputError as err:\n    print(err)\n    sys.exit(2)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert message in done.stdout and "ulimit -f" in done.stdout
    assert target.read_bytes() == b"old checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


@pytest.mark.parametrize("where", ["file", "proc"])
def test_a_folder_nothing_can_be_created_in_is_refused_before_work(tmp_path, where):
    blocker = tmp_path / "f.txt"
    blocker.write_text("x")
    folder = blocker / "adapter" if where == "file" else Path("/proc/la-check/adapter")
    with pytest.raises(UserInputError, match="cannot create"):
        check_can_create(folder, "the adapter folder")
    with pytest.raises(UserInputError, match="cannot create"):
        check_replaceable(folder, {"adapter_config.json"})
    check_can_create(tmp_path / "new" / "deeper", "a folder")  # creatable: nothing raised, nothing left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]
