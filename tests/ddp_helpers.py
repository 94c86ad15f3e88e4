"""Helpers for the scale-out tests, importable by Lightning subprocesses through ``class_path``.

``ResumableTextData`` is the proposed fix for mid-epoch resume (the patch for data.py is in the issue note). With a
plain DataLoader a run resumed mid-epoch starts the epoch's batch order from the beginning again (Lightning only
shortens the epoch), so it trains on other batches than an uninterrupted run. Lightning can checkpoint a loader that
has ``state_dict``/``load_state_dict``, but in Lightning 2.6 it never restores that state when ``configure_optimizers``
reads ``trainer.estimated_stepping_batches``, as ours does (Lightning issue #20550): the position therefore travels
through the DataModule's own ``state_dict``, which Lightning always restores.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader

from lightning_adapters import TextClassificationDataModule


class ResumableDataLoader(DataLoader):
    """Counts the batches it hands out in the current pass; after a restore the next pass skips that many.

    ``position`` is shared with the DataModule, and with the copy Lightning makes of this loader to add a
    DistributedSampler, so whichever object Lightning asks sees the same count.
    """

    def __init__(self, *args: Any, position: dict[str, int] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.position = {"served": 0, "skip": 0} if position is None else position

    def __iter__(self):
        # A generator: this body runs at the first next(), i.e. after Lightning restored the checkpoint, even though
        # Lightning creates the iterator before it. A checkpoint taken after an epoch's last batch skips nothing.
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


class ResumableTextData(TextClassificationDataModule):
    """The library's DataModule with the resumable training loader."""

    def _position(self) -> dict[str, int]:
        # created on first use: no __init__ of our own, so the CLI keeps reading the parent's signature
        return self.__dict__.setdefault("_train_position", {"served": 0, "skip": 0})

    def train_dataloader(self) -> DataLoader:
        plain = super().train_dataloader()
        return ResumableDataLoader(plain.dataset, batch_size=plain.batch_size, sampler=plain.sampler,
                                   collate_fn=plain.collate_fn, num_workers=plain.num_workers,
                                   persistent_workers=plain.persistent_workers, position=self._position())

    def state_dict(self) -> dict[str, int]:
        return {"train_batches_served": self._position()["served"]}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._position()["skip"] = state.get("train_batches_served", 0)
