"""Shared output helpers for the benchmark scripts: results.json records, a markdown table, the setup string.

Every benchmark writes three files into its output folder:

- ``results.json``: a list of records ``{"benchmark", "task", "method", "metric", "value", "unit", "setup"}``,
  one per figure, so that other tools (CI, a docs page) can read the numbers without parsing markdown;
- ``results.md``: the human-readable table(s) and the acceptance checks;
- a PNG plot.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

RECORD_FIELDS = ("benchmark", "task", "method", "metric", "value", "unit", "setup")


def setup_runtime(threads: int) -> None:
    """Offline, fixed thread count, no progress bars: the same runtime for every benchmark."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(threads)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def peak_memory_mib(run: Callable[[], None], device: torch.device) -> float:
    """MiB that ``run()`` needs at its peak: CUDA peak allocated (weights included), or on CPU the growth of the peak
    resident set (VmHWM, reset just before) over the resident set before — activations, gradients, optimizer state.
    Call it in a fresh process: the CPU allocator keeps freed pages, so an earlier run would hide a later one's peak.
    """
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        run()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20
    baseline = _status_kib("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS high-water mark
        run()
        peak = _status_kib("VmHWM")
    except OSError:  # no /proc (macOS): ru_maxrss is the lifetime peak, KiB on Linux, bytes on macOS
        run()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // (1024 if sys.platform == "darwin" else 1)
    return (peak - baseline) / 1024


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def default_out(benchmark: str) -> Path:
    return Path(__file__).resolve().parent / "results" / benchmark


def record(benchmark: str, task: str, method: str, metric: str, value: float | int, unit: str,
           setup: str) -> dict[str, Any]:
    return {"benchmark": benchmark, "task": task, "method": method, "metric": metric, "value": value, "unit": unit,
            "setup": setup}


def hardware() -> str:
    """One line naming the device the numbers were taken on."""
    if torch.cuda.is_available():
        return f"CUDA {torch.cuda.get_device_name(0)}"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {cpu} ({os.cpu_count()} logical cores), torch threads {torch.get_num_threads()}"


def versions() -> str:
    import lightning
    import transformers

    return f"torch {torch.__version__}, lightning {lightning.__version__}, transformers {transformers.__version__}"


def write_json(out: Path, records: list[dict[str, Any]]) -> Path:
    for rec in records:
        missing = [f for f in RECORD_FIELDS if f not in rec]
        assert not missing, f"record {rec} lacks {missing}"
    path = out / "results.json"
    path.write_text(json.dumps(records, indent=2) + "\n")
    return path


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def check_line(name: str, passed: bool, detail: str) -> str:
    return f"- **{'PASS' if passed else 'FAIL'}** — {name}: {detail}"
