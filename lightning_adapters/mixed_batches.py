"""Mixed-task batches and `Parallel`: several adapters in one batch (a mixin of `AdapterModule`).

A mixed batch carries ``adapter_names`` (`ROUTE_KEY`): one adapter name per row. The module splits it by adapter
and runs each part with only that adapter switched on and its own head (`routed`), so every row is computed exactly
as alone with its adapter — for every strategy (prompt and prefix tuning included) and every head, on encoders,
decoders and encoder-decoders. A training step's loss is the sum of the parts' losses (each the mean over its task's
rows), so its gradients are the sum of the per-task steps'; evaluation scores each task under
``<stage>_<adapter>_<metric>``; prediction rows keep the batch's order and name their adapter. One backbone pass per
adapter present: `recipes/benchmark/serving.py` measures what that costs against a single-adapter batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from lightning_adapters.errors import UserInputError
from lightning_adapters.strategies.base import set_active

ROUTE_KEY = "adapter_names"  # a mixed-task batch's key: the adapter of each row


class MixedBatches:
    """Routing for `AdapterModule` (which provides ``backbone``, ``head_of``, ``adapter_names``, ``active_adapters``,
    ``parallel``, ``_check_switchable`` and Lightning's ``log``)."""

    def _init_mixed_batches(self) -> None:
        self._routed_metrics: dict[str, dict[str, Any]] = {}  # stage -> adapter -> metric collection

    def routed(self, batch: dict[str, Any]) -> Iterator[tuple[str, torch.Tensor, dict[str, Any]]]:
        """A mixed batch as ``(name, rows, part)`` per adapter, in order of first appearance; while the caller
        handles a part, only that adapter is switched on."""
        names = batch[ROUTE_KEY]
        size = rows_of(batch)
        if isinstance(names, str) or not isinstance(names, Sequence) or len(names) != size:
            raise UserInputError(f"batch key '{ROUTE_KEY}' must list one adapter name per row ({size} rows), got "
                                 f"{names!r:.80} — give a list of names")
        unknown = sorted({str(name) for name in names} - set(self.adapter_names))
        if unknown:
            raise UserInputError(f"batch names adapter '{unknown[0]}', which this module does not have — it has "
                                 f"{', '.join(self.adapter_names)}; load_adapter() it first")
        for name in dict.fromkeys(names):
            rows = torch.tensor([i for i, n in enumerate(names) if n == name], dtype=torch.long)
            part = take_rows(batch, rows, size)
            with self.only_adapter(name):
                yield name, rows, part

    def side_by_side(self, batch: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
        """`Parallel`: ``(name, batch)`` for each active adapter, switched on alone while the caller handles it."""
        for name in self.active_adapters:
            with self.only_adapter(name):
                yield name, batch

    @contextmanager
    def only_adapter(self, name: str) -> Iterator[None]:
        """Inside: only adapter ``name`` is switched on (its head is ``head_of(name)``); afterwards, as before."""
        self._check_switchable([name])
        set_active(self.backbone, {name})
        try:
            yield
        finally:
            set_active(self.backbone, set() if self.parallel else set(self.active_adapters))

    # ---- the Lightning steps' mixed-batch forms ----------------------------------------------------------------
    def mixed_forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        """``{adapter: (rows, outputs)}`` for a mixed batch; ``{adapter: outputs}`` for `Parallel`."""
        if ROUTE_KEY in batch:
            return {name: (rows, self.head_of(name)(self.backbone, part)) for name, rows, part in self.routed(batch)}
        return {name: self.head_of(name)(self.backbone, batch) for name, batch in self.side_by_side(batch)}

    def mixed_training_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """The sum of the tasks' losses, so each adapter gets its own task's gradient."""
        losses = {name: self.head_of(name).loss(self.head_of(name)(self.backbone, part), part)
                  for name, _, part in self.routed(batch)}
        for name, loss in losses.items():  # rank-local: another rank's batch may lack the task
            self.log(f"train_loss_{name}", loss, batch_size=rows_of(batch))
        return torch.stack(list(losses.values())).sum()

    def mixed_eval_step(self, batch: dict[str, Any], stage: str) -> None:
        """Each task's rows update that task's metrics (``<stage>_<adapter>_<metric>``); the loss logged is the sum
        of the tasks' losses, as in training."""
        losses = []
        for name, _, part in self.routed(batch):
            head = self.head_of(name)
            outputs = head(self.backbone, part)
            losses.append(head.loss(outputs, part))
            head.update_metrics(self.task_metrics(stage)[name], outputs, part, self.backbone, stage)
        self.log(f"{stage}_loss", torch.stack(losses).sum(), prog_bar=True, batch_size=rows_of(batch),
                 sync_dist=True)

    def task_metrics(self, stage: str) -> dict[str, Any]:
        """Per-adapter metric collections for mixed batches, made for every adapter at once (the same on every rank,
        whichever tasks its batches hold: computing them is a collective)."""
        made = self._routed_metrics.get(stage)
        if made is None or set(made) != set(self.adapter_names):
            made = {name: self.head_of(name).metrics().clone(prefix=f"{stage}_{name}_").to(self.device)
                    for name in self.adapter_names}
            self._routed_metrics[stage] = made
        return made

    def mixed_predict(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        """Mixed batch: each row predicted by its adapter and head, in the batch's order, naming its adapter.
        `Parallel`: each row holds every active adapter's prediction, under its name."""
        if ROUTE_KEY not in batch:
            predictions = {name: self.head_of(name).predict(self.backbone, batch)
                           for name, batch in self.side_by_side(batch)}
            return [dict(zip(predictions, rows, strict=True)) for rows in zip(*predictions.values(), strict=True)]
        ordered: list[dict[str, Any]] = [{} for _ in range(rows_of(batch))]
        for name, rows, part in self.routed(batch):
            for i, row in zip(rows.tolist(), self.head_of(name).predict(self.backbone, part), strict=True):
                ordered[i] = {"adapter": name, **row}
        return ordered

    def check_not_parallel(self, stage: str) -> None:
        if self.parallel:
            raise UserInputError(f"Parallel adapters are for inference (forward, predict), not {stage} — train "
                                 f"several tasks with mixed-task batches (batch key '{ROUTE_KEY}')")


def rows_of(batch: dict[str, Any]) -> int:
    return len(batch["input_ids"])


def take_rows(batch: dict[str, Any], rows: torch.Tensor, size: int) -> dict[str, Any]:
    """The rows ``rows`` of ``batch``: of every tensor or list with one entry per row; other values as they are."""
    part = {}
    for key, value in batch.items():
        if key == ROUTE_KEY:
            continue
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == size:
            part[key] = value.index_select(0, rows.to(value.device))
        elif isinstance(value, list | tuple) and len(value) == size:
            part[key] = [value[i] for i in rows.tolist()]
        else:
            part[key] = value
    return part
