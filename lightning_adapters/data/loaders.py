"""Data loaders whose batch order depends only on (seed, epoch, position), so any resumed run is exact.

- `EpochShuffleSampler`: a fresh permutation per epoch drawn from ``seed + epoch`` (Lightning calls ``set_epoch``);
  `LengthGroupedSampler` (``group_by_length=True``): the same, in batches of similar length.
- `ResumableDataLoader`: counts the batches it has handed out in the current epoch; after a restore, the next epoch
  pass skips that many, so a run resumed from a MID-epoch checkpoint (SLURM requeue, ``every_n_train_steps``)
  trains on exactly the batches the uninterrupted run trains on. A plain DataLoader restarts the epoch's order from
  its first batch while Lightning only shortens the epoch, i.e. it trains on other batches.
- `SplitDataModule`: the DataModule side, base of every DataModule here (train/validation/test/predict loaders from
  prepared splits). The position travels in the DataModule's ``state_dict``, which Lightning always saves and
  restores; Lightning 2.6 skips restoring a *loader's* own state when ``configure_optimizers`` reads
  ``trainer.estimated_stepping_batches``, as ours does (Lightning issue #20550).

Prediction rows must be traceable to their input: every DataModule gives each example a ``meta`` dict that its predict
batches carry (batch key ``meta``, one per example) and the heads start their rows with: the row ``id`` (`row_ids`)
and, where the split is labelled, the gold answer (``gold_label``, ``gold_tags``, ``gold_answers``).
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import lightning as L
import torch
from torch.utils.data import DataLoader

from lightning_adapters.data.pack import build_pack_init
from lightning_adapters.data.readers import is_missing
from lightning_adapters.data.source import without_splits
from lightning_adapters.errors import UserInputError

ID_COLUMN = "id"  # a column of this name holds the rows' own ids


def check_limits(**limits: tuple[float, float, float]) -> None:
    """``name=(value, low, high)``: raise a one-line error unless ``low <= value < high``."""
    for name, (value, low, high) in limits.items():
        if not low <= value < high:
            raise UserInputError(f"{name}={value} is out of range — use a value >= {low}"
                                 + (f" and < {high}" if high < math.inf else ""))


def row_ids(columns: dict[str, list[Any]], count: int, id_column: str | None = None) -> list[Any]:
    """Each row's id: its value in ``id_column`` (default: an ``id`` column when there is one), else its 0-based
    index in the file. Rows keep their id when carved into another split, so it always points into their file."""
    column = id_column or ID_COLUMN
    if column not in columns:
        return list(range(count))
    return [None if is_missing(value) else value for value in columns[column][:count]]  # NaN is not JSON


class EpochShuffleSampler(torch.utils.data.Sampler[int]):
    """A fresh permutation each epoch, drawn from ``seed + epoch`` only."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())


class EpochIndexSampler(torch.utils.data.Sampler[tuple[int, int]]):
    """``sampler``'s indices as ``(index, epoch)`` pairs, for a training set whose items change per epoch
    (`lightning_adapters.data.augmentation.AugmentedRows`). The epoch travels with every index rather than being set
    on the dataset: worker processes (persistent ones too) hold their own copy of the dataset, which a ``set_epoch``
    in the main process never reaches. ``set_epoch`` (Lightning's call) goes to ``sampler``, which keeps the order."""

    def __init__(self, sampler: EpochShuffleSampler | LengthGroupedSampler) -> None:
        self.sampler = sampler

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        epoch = self.sampler.epoch
        return ((index, epoch) for index in self.sampler)


def item_length(item: dict[str, Any]) -> int:
    """Tokens a training item costs: its input, plus a separate target sequence where it has one."""
    labels = item.get("labels")
    return len(item["input_ids"]) + (len(labels) if isinstance(labels, list) else 0)


class LengthGroupedSampler(torch.utils.data.Sampler[int]):
    """Training order whose consecutive runs of ``group`` rows have similar lengths, so dynamic padding pads little
    (about 2x faster CPU epochs on Financial PhraseBank; HF Trainer's ``group_by_length``).

    Each epoch, from ``seed + epoch`` only: shuffle the rows, sort every ``window`` groups of them by length, cut them
    into groups and shuffle the groups; the one short group goes last so that every batch the DataLoader cuts is one
    group. ``group`` is the batch size times the world size: Lightning's DistributedSamplerWrapper (no shuffle for a
    custom sampler) deals the rows round-robin, so each rank's batch is a slice of one group."""

    def __init__(self, lengths: Sequence[int], group: int, seed: int, window: int = 50) -> None:
        self.lengths, self.group, self.seed, self.window, self.epoch = list(lengths), group, seed, window, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        size = self.group * self.window
        groups = []
        for start in range(0, len(order), size):
            chunk = sorted(order[start:start + size], key=self.lengths.__getitem__)
            groups += [chunk[i:i + self.group] for i in range(0, len(chunk), self.group)]
        short = [g for g in groups if len(g) < self.group]
        full = [g for g in groups if len(g) == self.group]
        shuffled = [full[i] for i in torch.randperm(len(full), generator=generator).tolist()]
        return iter([index for group in shuffled + short for index in group])


def forward_epoch(sampler: Any) -> None:
    """Under DDP, Lightning wraps our sampler in a ``DistributedSamplerWrapper`` and calls ``set_epoch`` on the wrapper
    only; Lightning < 2.6 does not pass it on, so our sampler would draw epoch 0's order (and augmentation epoch 0's
    edits) every epoch. Pass the wrapper's epoch to the sampler it wraps (a no-op where Lightning already did)."""
    inner = getattr(getattr(sampler, "dataset", None), "_sampler", None)
    if isinstance(sampler, torch.utils.data.DistributedSampler) and callable(getattr(inner, "set_epoch", None)):
        inner.set_epoch(sampler.epoch)


class ResumableDataLoader(DataLoader):
    """A DataLoader that skips, in its first pass after a restore, the batches the checkpointed run already saw.

    ``position`` is shared with the DataModule and with the copy Lightning makes of this loader to add a
    DistributedSampler, so whichever object Lightning asks sees the same count.
    """

    def __init__(self, *args: Any, position: dict[str, int] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.position = {"served": 0, "skip": 0} if position is None else position

    def __iter__(self):
        # A generator: this body runs at the first next(), i.e. after Lightning restored the checkpoint, even though
        # Lightning creates the iterator before it. A checkpoint taken after an epoch's last batch skips nothing.
        forward_epoch(self.sampler)
        skip = self.position["skip"] % len(self)
        self.position.update(served=skip, skip=0)
        rng = torch.get_rng_state()
        iterator = super().__iter__()  # draws the workers' base seed from the global RNG
        if skip:  # an uninterrupted run drew it at the epoch start, before the checkpoint: do not draw twice
            torch.set_rng_state(rng)
        for _ in range(skip):  # collates the skipped batches once: cheap next to a training step
            next(iterator)
        for batch in iterator:
            self.position["served"] += 1
            yield batch

    # Lightning's own loader checkpointing (also keeps it from warning that the loader cannot resume mid-epoch).
    def state_dict(self) -> dict[str, int]:
        return {"train_batches_served": self.position["served"]}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.position["skip"] = state["train_batches_served"]


# Help of the options every codec shares; `SplitDataModule.__init_subclass__` adds those a codec's ``Args:`` lacks.
SHARED_ARGS = {
    "tokenizer": "backbone alias, folder or hub id whose tokenizer is used (the CLI links it from the model).",
    "hub_dataset": "Hugging Face dataset id (needs network); local files override its splits.",
    "hub_config": "configuration name of ``hub_dataset``.",
    "seed": "seed of the carved splits and of the training-batch order.",
    "batch_size": "training batch size.",
    "eval_batch_size": "validation/test/predict batch size (default: ``batch_size``).",
    "num_workers": "data-loading worker processes.",
    "group_by_length": "training batches of rows with similar token counts (less padding, faster epochs; the order is "
                       "still seeded, exact on resume).",
}


class SplitDataModule(L.LightningDataModule):
    """Base of every DataModule here: loaders for the prepared splits; the training one seeded and resumable.

    A subclass fills ``self._datasets`` (split name -> sequence of items) in ``setup`` and sets ``seed``,
    ``batch_size``, ``eval_batch_size`` and ``num_workers``; it says how a stage's items become a batch in
    ``collator``. Predict reads the ``predict`` split, else the ``test`` split.
    """

    seed: int
    batch_size: int
    eval_batch_size: int
    num_workers: int
    _datasets: dict[str, Sequence[Any]]
    group_by_length: bool = False  # training batches of similar length (`LengthGroupedSampler`)
    carved_splits: tuple[str, ...] = ("validation", "test")  # splits a <split>_fraction can carve from train
    label_counts: list[int] | None = None  # training rows per label where labels are classes (the CLI links it)
    task_labels: dict[str, list[str] | None] | None = None  # several tasks' label sets (MultiTaskDataModule)
    # Batch keys this data produces -> what each holds (heads declare what they read: ``TaskHead.reads``).
    batch_keys: ClassVar[dict[str, str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "pack" in cls.__dict__:  # a domain pack's declaration: its __init__ is built from it
            build_pack_init(cls)
        elif "__init__" in cls.__dict__ and "Args:" in (cls.__doc__ or ""):  # a codec: the shared options' help
            documented = set(re.findall(r"^\s+(\w+):", cls.__doc__, re.MULTILINE))
            shared = [name for name in inspect.signature(cls.__init__).parameters
                      if name in SHARED_ARGS and name not in documented]
            cls.__doc__ = cls.__doc__.rstrip() + "\n" + "".join(f"        {n}: {SHARED_ARGS[n]}\n" for n in shared)

    def keep_options(self, tokenizer: str, seed: int, batch_size: int, eval_batch_size: int | None, num_workers: int,
                     group_by_length: bool, validation_fraction: float = 0.0, test_fraction: float = 0.0,
                     **limits: tuple[float, float, float]) -> None:
        """Check the options every codec shares, and the codec's own ``limits`` (``name=(value, low, high)``), in one
        place; keep them as attributes of the same names."""
        eval_batch_size = batch_size if eval_batch_size is None else eval_batch_size
        check_limits(validation_fraction=(validation_fraction, 0, 1), test_fraction=(test_fraction, 0, 1), **limits,
                     batch_size=(batch_size, 1, math.inf), eval_batch_size=(eval_batch_size, 1, math.inf),
                     num_workers=(num_workers, 0, math.inf))
        self.tokenizer_name, self.seed, self.batch_size, self.eval_batch_size = tokenizer, seed, batch_size, \
            eval_batch_size
        self.num_workers, self.group_by_length = num_workers, group_by_length
        self.validation_fraction, self.test_fraction = validation_fraction, test_fraction

    def collator(self, stage: str) -> Callable:
        """The collate function of ``stage`` (``train``, ``validation``, ``test`` or ``predict``)."""
        raise NotImplementedError

    # ---- in-memory rows (`lightning_adapters.Predictor`): the predict path of a file, without the file -----------
    @classmethod
    def for_rows(cls, tokenizer: str, **options: Any) -> SplitDataModule:
        """This DataModule with no data file, set up to encode in-memory rows (`predict_loader`)."""
        with without_splits():
            data = cls(tokenizer=tokenizer, **options)
        data.setup("predict")
        return data

    def text_rows(self, texts: list[str]) -> list[dict[str, Any]]:
        """Plain texts as the rows this data reads (a codec whose rows hold one text overrides this)."""
        raise UserInputError(f"{type(self).__name__} reads rows of several fields, not plain texts — pass dicts "
                             "with the columns a predict_file of it has")

    def predict_items(self, rows: list[dict[str, Any]]) -> list[Any]:
        """``rows`` checked and encoded as the rows of a ``predict_file`` are: a predict split's items."""
        raise NotImplementedError(f"{type(self).__name__} cannot encode in-memory rows")

    def predict_loader(self, rows: list[dict[str, Any]], batch_size: int) -> DataLoader:
        """Predict batches of in-memory rows, in their order: the loader `predict_dataloader` gives for a file."""
        return DataLoader(self.predict_items(rows), batch_size=batch_size, collate_fn=self.collator("predict"))

    def make_loader(self, split: str, stage: str) -> DataLoader:
        if split not in self._datasets:
            carve = f" (or train_file with {split}_fraction > 0)" if split in self.carved_splits else ""
            raise UserInputError(f"no {split} data — pass {split}_file{carve}")
        dataset, collate_fn = self._datasets[split], self.collator(stage)
        common = {"collate_fn": collate_fn, "num_workers": self.num_workers,
                  "persistent_workers": self.num_workers > 0}
        if stage != "train":
            return DataLoader(dataset, batch_size=self.eval_batch_size, **common)
        return ResumableDataLoader(dataset, batch_size=self.batch_size, sampler=self._train_sampler(dataset),
                                   position=self._train_position(), **common)

    def _train_sampler(self, dataset: Sequence[Any]) -> torch.utils.data.Sampler:
        """The seeded training order; as (index, epoch) pairs for a training set that reads the epoch."""
        if not self.group_by_length:
            sampler = EpochShuffleSampler(len(dataset), self.seed)
        else:
            trainer = getattr(self, "trainer", None)
            world_size = trainer.world_size if trainer is not None else 1
            sampler = LengthGroupedSampler([item_length(item) for item in dataset], self.batch_size * world_size,
                                           self.seed)
        return EpochIndexSampler(sampler) if getattr(dataset, "reads_epoch", False) else sampler

    def train_dataloader(self) -> DataLoader:
        return self.make_loader("train", "train")

    def val_dataloader(self) -> DataLoader:
        return self.make_loader("validation", "validation")

    def test_dataloader(self) -> DataLoader:
        return self.make_loader("test", "test")

    def predict_dataloader(self) -> DataLoader:
        return self.make_loader("predict" if "predict" in self._datasets else "test", "predict")

    def _train_position(self) -> dict[str, int]:
        # created on first use, so subclasses need no __init__ call for it
        return self.__dict__.setdefault("_train_position_state", {"served": 0, "skip": 0})

    def state_dict(self) -> dict[str, int]:
        return {"train_batches_served": self._train_position()["served"]}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._train_position()["skip"] = state.get("train_batches_served", 0)
