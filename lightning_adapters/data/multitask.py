"""Several tasks' DataModules as one, for a module that trains one adapter per task (``AdapterModule(tasks=...)``).

Every batch names each row's task (batch key ``adapter_names``), so the module routes each row to its task's adapter
and head (`lightning_adapters.mixed_batches`). Training batches follow a task mixture drawn from ``seed + epoch``
only (exact resume holds); an epoch has as many rows as all the tasks' training splits together:

- ``proportional``: every training row once per epoch, in a fresh order;
- ``uniform``: each row's (or batch's) task drawn with equal odds — small tasks repeat, big ones are subsampled;
- ``temperature``: odds proportional to ``rows ** (1 / temperature)``, between the two (``temperature: 1`` is
  proportional odds, large ones approach uniform; multilingual and multi-task models commonly use 2 to 5).

``mix: rows`` puts rows of several tasks in one batch — tasks whose batches have the same keys (several
classification packs, say); ``mix: batches`` keeps each batch to one task (any tasks). Validation, test and predict
go through each task's split in turn, so each task is scored by its own metrics under ``<stage>_<task>_<metric>``.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from lightning_adapters.data.loaders import ResumableDataLoader, SplitDataModule
from lightning_adapters.errors import UserInputError
from lightning_adapters.mixed_batches import ROUTE_KEY
from lightning_adapters.named_adapters import check_adapter_name

SAMPLING = ("proportional", "uniform", "temperature")
MIX = ("rows", "batches")


def task_odds(sizes: Sequence[int], sampling: str, temperature: float) -> list[float]:
    """The chance that a drawn row (or batch) is each task's."""
    exponent = {"proportional": 1.0, "uniform": 0.0, "temperature": 1 / temperature}[sampling]
    weights = [size ** exponent for size in sizes]
    return [weight / sum(weights) for weight in weights]


class TaskRows(Dataset):
    """The tasks' items of one split end to end; item ``i`` is ``(task index, item)``, and a list of indices gives a
    list of them: the samplers below hand out whole batches (loaders with ``batch_size=None``, so Lightning neither
    re-batches them nor needs to rebuild a custom batch sampler)."""

    def __init__(self, parts: Sequence[Sequence[Any]]) -> None:
        self.parts = list(parts)
        self.offsets = [0]
        for part in self.parts:
            self.offsets.append(self.offsets[-1] + len(part))

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getitem__(self, index: int | list[int]) -> tuple[int, Any] | list[tuple[int, Any]]:
        if isinstance(index, list):
            return [self[i] for i in index]
        task = bisect.bisect_right(self.offsets, index) - 1
        return task, self.parts[task][index - self.offsets[task]]


class MixtureBatchSampler(Sampler[list[int]]):
    """Training batches of the task mixture (indices into `TaskRows`), from ``seed + epoch`` only."""

    def __init__(self, sizes: Sequence[int], odds: Sequence[float], batch_size: int, seed: int,
                 exact_pass: bool, one_task_per_batch: bool) -> None:
        self.sizes, self.odds, self.batch_size, self.seed = list(sizes), torch.tensor(odds), batch_size, seed
        self.exact_pass, self.one_task_per_batch, self.epoch = exact_pass, one_task_per_batch, 0
        self.offsets = [sum(self.sizes[:i]) for i in range(len(self.sizes))]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        if self.exact_pass and self.one_task_per_batch:
            return sum(math.ceil(size / self.batch_size) for size in self.sizes)
        return math.ceil(sum(self.sizes) / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        if self.exact_pass:  # proportional: every row once
            yield from self._one_pass(generator)
            return
        streams = [self._endless(task, generator) for task in range(len(self.sizes))]
        if self.one_task_per_batch:
            for task in torch.multinomial(self.odds, len(self), replacement=True, generator=generator).tolist():
                yield [next(streams[task]) for _ in range(self.batch_size)]
            return
        tasks = torch.multinomial(self.odds, sum(self.sizes), replacement=True, generator=generator).tolist()
        rows = [next(streams[task]) for task in tasks]
        yield from (rows[i:i + self.batch_size] for i in range(0, len(rows), self.batch_size))

    def _one_pass(self, generator: torch.Generator) -> Iterator[list[int]]:
        if not self.one_task_per_batch:
            rows = torch.randperm(sum(self.sizes), generator=generator).tolist()
            yield from (rows[i:i + self.batch_size] for i in range(0, len(rows), self.batch_size))
            return
        batches = []
        for offset, size in zip(self.offsets, self.sizes, strict=True):
            rows = [offset + row for row in torch.randperm(size, generator=generator).tolist()]
            batches += [rows[i:i + self.batch_size] for i in range(0, size, self.batch_size)]
        yield from (batches[i] for i in torch.randperm(len(batches), generator=generator).tolist())

    def _endless(self, task: int, generator: torch.Generator) -> Iterator[int]:
        """Task ``task``'s rows in fresh orders, one pass after another (a task drawn more often than it has rows
        repeats them)."""
        while True:
            order = torch.randperm(self.sizes[task], generator=generator).tolist()
            yield from (self.offsets[task] + row for row in order)


class TaskBatches(Sampler[list[int]]):
    """Evaluation batches: each task's rows in order, in batches of one task."""

    def __init__(self, sizes: Sequence[int], batch_size: int) -> None:
        self.batches, start = [], 0
        for size in sizes:
            self.batches += [list(range(start + i, start + min(i + batch_size, size)))
                             for i in range(0, size, batch_size)]
            start += size

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)


class NamedCollator:
    """Collates `TaskRows` items with their task's collate function and names each row's task."""

    def __init__(self, names: Sequence[str], collators: Sequence[Callable]) -> None:
        self.names, self.collators = list(names), list(collators)

    def __call__(self, tagged: list[tuple[int, Any]]) -> dict[str, Any]:
        batch = self.collators[tagged[0][0]]([item for _, item in tagged])  # one task, or tasks whose batches match
        batch[ROUTE_KEY] = [self.names[task] for task, _ in tagged]
        return batch


class MultiTaskDataModule(SplitDataModule):
    """Several tasks' DataModules as one, each row naming its task's adapter (``AdapterModule(tasks=...)``).

    Args:
        tasks: ``{task name: DataModule}`` — each task's data, in YAML a ``class_path``/``init_args`` per task. The
            names are the model's adapter names (its own adapter, ``adapter_name``, and those under ``tasks``).
        tokenizer: backbone whose tokenizer every task uses (the CLI links it from the model; it replaces the tasks'
            own ``tokenizer`` setting).
        sampling: how training draws tasks: ``proportional`` (every row once an epoch), ``uniform`` or
            ``temperature``.
        temperature: for ``sampling: temperature``, odds proportional to ``rows ** (1 / temperature)``.
        mix: ``rows`` (tasks share batches; their batches must have the same keys) or ``batches`` (one task per
            batch).
        seed: seed of the training mixture and order.
        batch_size: training batch size (rows of every task together).
        eval_batch_size: validation/test/predict batch size (default: ``batch_size``).
        num_workers: data-loading worker processes.
    """

    def __init__(self, tasks: dict[str, SplitDataModule], tokenizer: str = "minilm", sampling: str = "proportional",
                 temperature: float = 2.0, mix: str = "rows", seed: int = 42, batch_size: int = 32,
                 eval_batch_size: int | None = None, num_workers: int = 0) -> None:
        super().__init__()
        if not tasks:
            raise UserInputError("MultiTaskDataModule needs at least one task — list them under tasks as "
                                 "{name: {class_path: ..., init_args: ...}}")
        if sampling not in SAMPLING or mix not in MIX:
            wrong, allowed = ("sampling", SAMPLING) if sampling not in SAMPLING else ("mix", MIX)
            raise UserInputError(f"unknown {wrong} '{sampling if wrong == 'sampling' else mix}' — use one of "
                                 f"{', '.join(allowed)}")
        self.keep_options(tokenizer, seed, batch_size, eval_batch_size, num_workers, group_by_length=False,
                          temperature=(temperature, 1e-6, math.inf))
        for name, task in tasks.items():
            check_adapter_name(name)
            if not isinstance(task, SplitDataModule):
                raise UserInputError(f"task '{name}' is a {type(task).__name__}, not one of our DataModules — give "
                                     "a lightning_adapters DataModule (a pack or a task family's)")
            if getattr(task, "tokenizer", None) is not None and task.tokenizer_name != tokenizer:
                raise UserInputError(f"task '{name}' was built with tokenizer '{task.tokenizer_name}', the model is "
                                     f"'{tokenizer}' — set that task's tokenizer: {tokenizer}")
            if getattr(task, "augment", None) is not None:  # its rows are indexed by (row, epoch): not mixed yet
                raise UserInputError(f"task '{name}' sets augment, which mixed-task training does not apply yet — "
                                     "drop augment there, or train that task in a run of its own")
            task.tokenizer_name = tokenizer  # loaded in the task's setup: the model's, as in a single-task run
        keys = {name: type(task).batch_keys for name, task in tasks.items()}
        if mix == "rows" and len({tuple(sorted(k.items())) for k in keys.values()}) > 1:
            raise UserInputError(f"tasks {', '.join(tasks)} make batches of different kinds, so their rows cannot "
                                 "share a batch — set mix: batches (one task per batch)")
        self.tasks, self.sampling, self.temperature, self.mix = dict(tasks), sampling, temperature, mix
        # the CLI links these to the model: each task's labels; no single label set
        self.task_labels = {name: getattr(task, "label_names", None) for name, task in tasks.items()}
        self.label_names = None

    def setup(self, stage: str | None = None) -> None:
        for task in self.tasks.values():
            task.setup(stage)

    def _parts(self, split: str, fallback: str | None = None) -> list[Sequence[Any]]:
        parts = []
        for name, task in self.tasks.items():
            chosen = split if split in task._datasets or fallback is None else fallback
            if chosen not in task._datasets:
                raise UserInputError(f"task '{name}' has no {split} data — give that task a {split}_file (or its "
                                     f"{split}_fraction)")
            parts.append(task._datasets[chosen])
        return parts

    def _collator(self, stage: str) -> NamedCollator:
        return NamedCollator(list(self.tasks), [task.collator(stage) for task in self.tasks.values()])

    def _loader(self, parts: list[Sequence[Any]], stage: str) -> DataLoader:
        return DataLoader(TaskRows(parts), sampler=TaskBatches([len(p) for p in parts], self.eval_batch_size),
                          batch_size=None, collate_fn=self._collator(stage), num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader:
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.world_size > 1:
            raise UserInputError("MultiTaskDataModule trains on one device for now (its task mixture is not "
                                 "sharded across ranks) — set trainer.devices: 1")
        parts = self._parts("train")
        sizes = [len(part) for part in parts]
        sampler = MixtureBatchSampler(sizes, task_odds(sizes, self.sampling, self.temperature), self.batch_size,
                                      self.seed, exact_pass=self.sampling == "proportional",
                                      one_task_per_batch=self.mix == "batches")
        return ResumableDataLoader(TaskRows(parts), sampler=sampler, batch_size=None,
                                   collate_fn=self._collator("train"), num_workers=self.num_workers,
                                   position=self._train_position())

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._parts("validation"), "validation")

    def test_dataloader(self) -> DataLoader:
        return self._loader(self._parts("test"), "test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self._parts("predict", fallback="test"), "predict")
