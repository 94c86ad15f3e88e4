"""The SLURM recipes on one CPU: the real sbatch scripts run with stand-ins for ``srun`` and ``scontrol``.

A job is interrupted the way SLURM does it (SIGUSR1 from outside, 90 s before the time limit in real life; then
SIGTERM when ``scontrol requeue`` takes the job off the node), run again as the requeued job, and must end with the
weights of an uninterrupted run, bit for bit. A ``kill -9`` (node failure) must lose only the current epoch.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_cli import workdir, write_config  # noqa: F401 — workdir is a fixture

from lightning_adapters.cli import run_cli
from lightning_adapters.tune_cli import parser as tune_parser

RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "slurm"
SCRIPTS = ["single_node.sbatch", "multi_node.sbatch"]
JOB_ID = "4242"

# srun stand-in: record the arguments, start one task per SLURM_NTASKS with its rank variables, record their pids.
SRUN = """#!/bin/bash
printf '%s\\0' "$@" > "$STANDIN_DIR/srun.args"
[ -n "$SRUN_DRY" ] && exit 0
for ((rank = 0; rank < SLURM_NTASKS; rank++)); do
    SLURM_PROCID=$rank SLURM_LOCALID=$rank "$@" &
    echo $! > "$STANDIN_DIR/rank$rank.pid"
done
status=0
for ((rank = 0; rank < SLURM_NTASKS; rank++)); do wait "$(cat "$STANDIN_DIR/rank$rank.pid")" || status=$?; done
exit $status
"""
# scontrol stand-in: record the request, then do what SLURM does to a job it requeues: SIGTERM it.
SCONTROL = """#!/bin/sh
echo "$@" >> "$STANDIN_DIR/scontrol.log"
kill -TERM $PPID
"""


def sbatch_options(script: Path) -> dict[str, str]:
    return dict(re.findall(r"^#SBATCH --([\w-]+)(?:=(\S+))?", script.read_text(), re.M))


@pytest.fixture
def standins(tmp_path):
    folder = tmp_path / "standins"
    folder.mkdir()
    for name, text in (("srun", SRUN), ("scontrol", SCONTROL)):
        (folder / name).write_text(text)
        (folder / name).chmod(0o755)
    yield folder
    for pid_file in folder.glob("rank*.pid"):  # a failed test must not leave training processes behind
        pid = int(pid_file.read_text())
        cmdline = Path(f"/proc/{pid}/cmdline")
        if cmdline.exists() and b"lightning" in cmdline.read_bytes():
            os.kill(pid, signal.SIGKILL)


def slurm_env(standins: Path, submit_dir: Path, nodes: str = "1", tasks_per_node: str = "1", job: str = JOB_ID
              ) -> dict[str, str]:
    """What SLURM sets for a batch job (job name not 'bash'/'interactive', or Lightning ignores SLURM)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(SLURM_JOB_ID=job, SLURM_JOB_NAME="adapters", SLURM_NNODES=nodes, SLURM_NTASKS_PER_NODE=tasks_per_node,
               SLURM_NTASKS=str(int(nodes) * int(tasks_per_node)), SLURM_NODELIST="localhost", SLURM_NODEID="0",
               SLURM_SUBMIT_DIR=str(submit_dir), STANDIN_DIR=str(standins),
               REPO=str(RECIPES.parents[1]), RUN_DIR=str(submit_dir / f"run-{job}"), OMP_NUM_THREADS="1",
               PATH=os.pathsep.join([str(standins), str(Path(sys.executable).parent), env["PATH"]]))
    return env


def sbatch(script: str, env: dict[str, str], *args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(["bash", str(RECIPES / script), *args], env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@pytest.mark.parametrize("script", SCRIPTS)
def test_sbatch_header_matches_trainer_flags_and_resume_picks_newest(script, tmp_path, standins):
    options = sbatch_options(RECIPES / script)
    assert options["signal"] == "SIGUSR1@90" and "requeue" in options
    assert options["gres"] == f"gpu:{options['ntasks-per-node']}"  # one task per GPU
    env = slurm_env(standins, tmp_path, options["nodes"], options["ntasks-per-node"])
    env["SRUN_DRY"] = "1"

    def srun_args() -> list[str]:
        job = sbatch(script, env, "config.yaml", "--trainer.max_epochs", "3", cwd=tmp_path)
        out = job.communicate(timeout=30)[0]
        assert job.returncode == 0, out
        return (standins / "srun.args").read_text().split("\0")[:-1]

    args = srun_args()
    assert args[:4] == ["lightning-adapters", "fit", "--config", "config.yaml"]
    pairs = list(zip(args[4::2], args[5::2], strict=True))
    flags = dict(pairs)
    assert flags["--trainer.num_nodes"] == options["nodes"]
    assert flags["--trainer.devices"] == options["ntasks-per-node"]
    assert flags["--trainer.strategy"] == "ddp"
    run = tmp_path / f"run-{JOB_ID}"
    assert flags["--trainer.default_root_dir"] == str(run)
    assert json.loads(flags["--trainer.logger"])["init_args"] == {"save_dir": str(run), "version": f"slurm-{JOB_ID}"}
    added = {cb["class_path"]: cb.get("init_args") for cb in (json.loads(v) for k, v in pairs if k.endswith("+"))}
    assert added == {"slurm_requeue.JobCheckpoint": {"dirpath": f"{run}/checkpoints", "filename": "latest",
                                                     "save_last": True},
                     "slurm_requeue.StepBoundaryRequeue": None}
    assert "--ckpt_path" not in args and args[-2:] == ["--trainer.max_epochs", "3"]  # user flags come last, and win

    checkpoints = run / "checkpoints"
    for age, path in enumerate([run / "hpc_ckpt_1.ckpt", checkpoints / "last.ckpt", run / "hpc_ckpt_2.ckpt"]):
        path.touch()
        os.utime(path, (time.time() - 100 + age, time.time() - 100 + age))
        args = srun_args()
        assert args[args.index("--ckpt_path") + 1] == str(path)  # the newest checkpoint of either kind


def fit_config(root: Path, model_dir: str, **overrides) -> Path:
    """The tiny fit, dropout on (so the RNG state must resume too), every epoch checkpointed to last.ckpt."""
    return write_config(root, model_dir, **{
        "trainer.max_epochs": 6, "trainer.num_sanity_val_steps": 0,
        "trainer.callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                               "init_args": {"dirpath": str(root / "ckpt"), "save_last": True}}],
        **overrides})


def state(path: Path) -> tuple[int, dict[str, torch.Tensor]]:
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    return checkpoint["global_step"], checkpoint["state_dict"]


def assert_same_weights(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert set(got) == set(want)
    for key in want:
        assert torch.equal(got[key], want[key]), key


def wait_for(path: Path, job: subprocess.Popen, timeout: float = 300) -> None:  # generous: a loaded CI box
    end = time.monotonic() + timeout
    while not path.exists():
        assert job.poll() is None, job.stdout.read()
        assert time.monotonic() < end, f"{path} never appeared"
        time.sleep(0.02)


def test_sigusr1_requeue_resumes_exactly(workdir, model_dirs, standins):  # noqa: F811
    """SIGUSR1 mid-training → adapter-only hpc checkpoint at a step boundary, `scontrol requeue 4242`, exit; the
    requeued job (same script, same job id) resumes from it and ends with the uninterrupted run's weights."""
    # the signal lands mid-epoch: the library's resumable training loader makes that exact too
    config = fit_config(workdir, model_dirs["bert"])
    run_cli(["fit", "--config", str(config)])
    want_steps, want = state(workdir / "ckpt" / "last.ckpt")
    assert want_steps == 6 * 6
    for path in (workdir / "ckpt").iterdir():
        path.unlink()
    shutil.rmtree(workdir / "adapter")

    env, run = slurm_env(standins, workdir), workdir / f"run-{JOB_ID}"
    cpu = ["--trainer.accelerator", "cpu", "--trainer.strategy", "auto"]  # one CPU process, like the reference
    job = sbatch("single_node.sbatch", env, str(config), *cpu, cwd=workdir)
    wait_for(run / "checkpoints" / "last.ckpt", job)  # training is under way
    os.kill(int((standins / "rank0.pid").read_text()), signal.SIGUSR1)
    out = job.communicate(timeout=60)[0]
    assert f"job {JOB_ID}, restart 0: no checkpoint yet" in out
    assert (standins / "scontrol.log").read_text().split() == ["requeue", JOB_ID], out
    hpc = sorted(run.glob("hpc_ckpt_*.ckpt"))
    assert [p.name for p in hpc] == ["hpc_ckpt_1.ckpt"], out
    checkpoint = torch.load(hpc[0], map_location="cpu", weights_only=True)
    assert 0 < checkpoint["global_step"] < want_steps, out  # interrupted mid-training, not after it
    progress = checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]
    assert progress["processed"] == progress["started"]  # saved after a step, not in the middle of one
    assert set(checkpoint["state_dict"]) == set(want)  # adapter + head only: no frozen base weight
    assert not (workdir / "adapter").exists()  # an interrupted fit exports nothing

    requeued = sbatch("single_node.sbatch", env, str(config), *cpu, cwd=workdir)
    out = requeued.communicate(timeout=120)[0]
    assert requeued.returncode == 0, out
    assert f"Restoring states from the checkpoint path at {hpc[0]}" in out
    steps, got = state(run / "checkpoints" / "last.ckpt")
    assert steps == want_steps
    assert_same_weights(got, want)


def test_kill_9_then_ckpt_path_last_resumes_exactly(workdir, model_dirs):  # noqa: F811
    """A node failure: the fit dies at once (no handler runs); `fit --ckpt_path last` redoes only the lost epoch and
    ends with the uninterrupted run's weights. Every checkpoint file left behind is complete (Lightning writes to a
    temporary file and renames it into place; see the note on other filesystems in recipes/slurm/README.md)."""
    config = fit_config(workdir, model_dirs["bert"], **{"trainer.max_epochs": 20})  # time to kill it mid-way
    run_cli(["fit", "--config", str(config)])
    want_steps, want = state(workdir / "ckpt" / "last.ckpt")
    shutil.rmtree(workdir / "ckpt")
    shutil.rmtree(workdir / "adapter")

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    job = subprocess.Popen([sys.executable, "-m", "lightning_adapters.cli", "fit", "--config", str(config)], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(workdir / "ckpt" / "last.ckpt", job)
    job.kill()
    out = job.communicate(timeout=30)[0]
    assert job.returncode == -signal.SIGKILL, out
    for path in (workdir / "ckpt").glob("[!.]*"):  # hidden names are temporaries, never picked as "last"
        torch.load(path, map_location="cpu", weights_only=True)  # no truncated checkpoint
    steps, _ = state(workdir / "ckpt" / "last.ckpt")
    assert 0 < steps < want_steps and steps % 6 == 0, out  # an end-of-epoch checkpoint, before the end

    run_cli(["fit", "--config", str(config), "--ckpt_path", "last"])
    steps, got = state(workdir / "ckpt" / "last.ckpt")
    assert steps == want_steps
    assert_same_weights(got, want)


def test_tune_array_gives_each_array_task_the_shared_study_and_its_own_seed(tmp_path, standins):
    options = sbatch_options(RECIPES / "tune_array.sbatch")
    assert options["gres"] == "gpu:1" and options["ntasks"] == "1" and "requeue" in options
    seen = []
    for task in ("0", "3"):
        env = {**slurm_env(standins, tmp_path), "SRUN_DRY": "1", "SLURM_ARRAY_JOB_ID": "77",
               "SLURM_ARRAY_TASK_ID": task}
        job = sbatch("tune_array.sbatch", env, "config.yaml", "configs/search/lora.yaml", "24",
                     "postgresql://tuner@db/optuna", "--trainer.max_epochs", "3", cwd=tmp_path)
        out = job.communicate(timeout=30)[0]
        assert job.returncode == 0, out
        args = (standins / "srun.args").read_text().split("\0")[:-1]
        assert args[:2] == ["lightning-adapters", "tune"]
        parsed, fit_args = tune_parser().parse_known_args(args[2:])
        seen.append(parsed)
        assert fit_args == ["--config", "config.yaml", "--trainer.accelerator", "gpu", "--trainer.devices", "1",
                            "--trainer.max_epochs", "3"]  # the user's flags last: they override the script's
    assert {(p.study, p.storage, p.output, p.n_trials, p.search) for p in seen} == {
        ("lora-77", "postgresql://tuner@db/optuna", str(RECIPES.parents[1] / "runs/tune/lora-77"), 24,
         "configs/search/lora.yaml")}
    assert [p.seed for p in seen] == [0, 3]
    missing = sbatch("tune_array.sbatch", slurm_env(standins, tmp_path), "config.yaml", cwd=tmp_path)
    assert missing.wait(timeout=30) != 0 and "usage: sbatch --array" in missing.communicate()[0]
