"""DDP on CPU (gloo): 2 processes train the same adapter as 1 process with the same global batch, and a 2-rank SLURM
job requeued by SIGUSR1 resumes bit for bit.

Why full-batch steps: under DDP Lightning wraps our EpochShuffleSampler in a DistributedSamplerWrapper that deals
its order round-robin to the ranks, so rank r's k-th batch is not half of the single process's k-th batch. Both orders
are fine (each depends only on seed and epoch, so resume stays exact), but only a global batch holding every training
row makes
the two runs comparable: then each step's gradient is the mean over the same 48 rows, whichever rank holds which.
SGD, not AdamW: Adam's update barely depends on the gradient's scale, so a sum-instead-of-mean bug would hide.
Dropout is 0 everywhere (base, adapters, head): the two runs draw different random masks otherwise.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import build_model, build_tokenizer
from safetensors.torch import load_file
from strategy_table import STRATEGIES as TABLE
from test_cli import workdir, write_config  # noqa: F401 — workdir is a fixture
from test_slurm import assert_same_weights, fit_config, sbatch, slurm_env, standins, state, wait_for  # noqa: F401

from lightning_adapters.cli import run_cli

ROWS, STEPS = 48, 3  # tests/test_cli.py writes 48 training rows; one step per epoch
STRATEGIES = {name: TABLE[name].config() for name in ("bottleneck", "lora")}  # as YAML names them


@pytest.fixture(scope="module")
def bert_without_dropout(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("bert_no_dropout")
    model = build_model("bert")
    model.config.hidden_dropout_prob = model.config.attention_probs_dropout_prob = 0.0
    model.save_pretrained(path)
    build_tokenizer().save_pretrained(path)
    return str(path)


# FSDP2 through Lightning's ModelParallelStrategy (AdapterModule.configure_model shards it); gloo on CPU. A full
# (not distributed) checkpoint: adapter + head weights gathered into one small file.
FSDP = {"class_path": "lightning.pytorch.strategies.ModelParallelStrategy",
        "init_args": {"data_parallel_size": 2, "tensor_parallel_size": 1, "save_distributed_checkpoint": False}}


def config_for(root: Path, model_dir: str, strategy: str, devices: int, parallel: str | dict = "ddp") -> Path:
    tag = f"{strategy}-{devices}" + ("-fsdp" if parallel == FSDP else "")
    path = write_config(root, model_dir, **{
        "trainer.max_epochs": STEPS, "trainer.devices": devices,
        "trainer.strategy": parallel if devices > 1 else "auto",
        "trainer.num_sanity_val_steps": 0, "trainer.logger.init_args.name": tag,
        "trainer.callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                               "init_args": {"dirpath": str(root / f"ckpt-{tag}"), "save_last": True}}],
        "model.init_args.strategy": STRATEGIES[strategy],
        "model.init_args.head": {"class_path": "lightning_adapters.ClassificationHead", "init_args": {"dropout": 0.0}},
        "model.init_args.optimizer": {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.5, "momentum": 0.9}},
        "data.init_args.batch_size": ROWS // devices,  # per process: the global batch is always every row
        "export_dir": str(root / f"adapter-{tag}"),
    })
    return path.rename(root / f"{tag}.yaml")


def last_metrics(root: Path, tag: str) -> dict[str, float]:
    rows = list(csv.DictReader(open(root / "runs" / tag / "version_0" / "metrics.csv")))
    row = [r for r in rows if r.get("val_loss")][-1]
    return {k: float(row[k]) for k in ("val_loss", "val_accuracy", "val_macro_f1")}


@pytest.mark.parametrize("parallel", ["ddp", FSDP], ids=["ddp", "fsdp"])
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_two_process_ddp_equals_one_process(strategy, parallel, workdir, bert_without_dropout):  # noqa: F811
    """DDP, and FSDP2 with frozen and trainable weights in the same sharded blocks: the same adapter as 1 process."""
    one = config_for(workdir, bert_without_dropout, strategy, devices=1)
    two = config_for(workdir, bert_without_dropout, strategy, devices=2, parallel=parallel)
    run_cli(["fit", "--config", str(one)])
    # A fresh interpreter, so Lightning's launcher can start rank 1 with the same command line.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "lightning_adapters.cli", "fit", "--config", str(two)], env=env,
                            cwd=workdir, capture_output=True, text=True, timeout=300)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out  # no "unused parameters" error: frozen weights never enter DDP's reducer
    assert "distributed_backend=gloo" in out and "MEMBER: 2/2" in out
    two_tag = two.stem

    # rank 0 alone exports, once, and leaves no temporary file behind
    assert out.count("adapter saved to") == 1, out
    files = {p.name for p in (workdir / f"adapter-{two_tag}").iterdir()}
    assert files == {"adapter_config.json", "adapter_model.safetensors", "README.md"}

    want = load_file(workdir / f"adapter-{strategy}-1" / "adapter_model.safetensors")
    got = load_file(workdir / f"adapter-{two_tag}" / "adapter_model.safetensors")
    assert set(got) == set(want)
    trained = [k for k in want if k.endswith(("up.bias", "lora_B.weight"))]
    assert trained and all(want[k].any() for k in trained)  # zero-initialised: nonzero means they trained
    for key in want:  # summation order differs (per-rank padding, all-reduce): equal to ~1e-7 of each tensor's scale
        scale = want[key].abs().max().item()
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-5 * scale + 1e-12, msg=key)
    for tag in (f"{strategy}-1", two_tag):  # adapter + head weights only, gathered whole (not shards)
        checkpoint = torch.load(workdir / f"ckpt-{tag}" / "last.ckpt", weights_only=True)
        assert checkpoint["global_step"] == STEPS
        assert {k: tuple(v.shape) for k, v in checkpoint["state_dict"].items()} == {
            k: tuple(v.shape) for k, v in want.items()}

    # validation metrics are reduced over both ranks (val_loss with sync_dist, torchmetrics by their own sync)
    one_metrics, two_metrics = last_metrics(workdir, f"{strategy}-1"), last_metrics(workdir, two_tag)
    assert one_metrics == pytest.approx(two_metrics, rel=1e-5)


def test_slurm_requeue_under_ddp_when_one_rank_gets_the_signal(workdir, model_dirs, standins):  # noqa: F811
    """The multi-GPU recipe, 2 ranks started by the srun stand-in: SIGUSR1 reaches rank 1 only (the worst case of
    ranks seeing it at different moments). Both ranks still save at the same step, rank 0 alone requeues, both exit,
    and the requeued job ends with the uninterrupted job's weights. (With Lightning's own handler this hangs: rank 1
    enters the checkpoint barrier while rank 0 waits in the gradient all-reduce.)

    Each rank's RNG state is saved and restored (module.all_rng_states), so the dropout masks match per rank.
    """
    config = fit_config(workdir, model_dirs["bert"], **{"trainer.max_epochs": 8})  # 3 steps an epoch per rank
    cpu = ["--trainer.accelerator", "cpu"]  # strategy ddp and 2 devices come from the recipe and SLURM_NTASKS_PER_NODE

    def job(job_id: str) -> subprocess.Popen:
        return sbatch("single_node.sbatch", slurm_env(standins, workdir, tasks_per_node="2", job=job_id),
                      str(config), *cpu, cwd=workdir)

    straight = job("5001")
    out = straight.communicate(timeout=300)[0]
    assert straight.returncode == 0 and "MEMBER: 2/2" in out, out
    want_steps, want = state(workdir / "run-5001" / "checkpoints" / "last.ckpt")
    assert want_steps == 8 * 3

    interrupted, run = job("5002"), workdir / "run-5002"
    wait_for(run / "checkpoints" / "last.ckpt", interrupted)
    os.kill(int((standins / "rank1.pid").read_text()), signal.SIGUSR1)
    out = interrupted.communicate(timeout=120)[0]
    assert (standins / "scontrol.log").read_text().split() == ["requeue", "5002"], out
    checkpoint = torch.load(run / "hpc_ckpt_1.ckpt", map_location="cpu", weights_only=True)
    assert 0 < checkpoint["global_step"] < want_steps
    progress = checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]
    assert progress["processed"] == progress["started"]  # between two steps

    requeued = job("5002")
    out = requeued.communicate(timeout=300)[0]
    assert requeued.returncode == 0 and "hpc_ckpt_1.ckpt" in out, out
    steps, got = state(run / "checkpoints" / "last.ckpt")
    assert steps == want_steps
    assert_same_weights(got, want)
