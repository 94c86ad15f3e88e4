"""Callbacks users put in YAML: JSONL predictions."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import BasePredictionWriter


class JsonlPredictionWriter(BasePredictionWriter):
    """Write ``predict`` results as JSON Lines, one object per input (e.g. text, label, probabilities).

    Rows are streamed to a temporary file and moved into place when prediction ends, so an interrupted run never
    leaves a truncated file under the final name. With several processes each rank writes ``<name>.rank<k>.jsonl``.

    Args:
        output: path of the JSONL file to write.
    """

    def __init__(self, output: str = "predictions.jsonl") -> None:
        super().__init__(write_interval="batch")
        self.output = output
        self._file = None

    def _target(self, trainer) -> Path:
        path = Path(self.output)
        return path.with_suffix(f".rank{trainer.global_rank}.jsonl") if trainer.world_size > 1 else path

    def on_predict_epoch_start(self, trainer, pl_module) -> None:
        target = self._target(trainer)
        target.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(target.with_name(f".{target.name}.partial"), "w", encoding="utf-8")  # noqa: SIM115

    def write_on_batch_end(self, trainer, pl_module, prediction: list[dict[str, Any]], batch_indices, batch,
                           batch_idx: int, dataloader_idx: int) -> None:
        for row in prediction:
            self._file.write(json.dumps(row, ensure_ascii=False) + "\n")

    def on_predict_epoch_end(self, trainer, pl_module) -> None:
        target = self._target(trainer)
        self._file.close()
        os.replace(self._file.name, target)
        self._file = None
        print(f"predictions written to {target}")
