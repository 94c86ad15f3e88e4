"""Where a pack's real dataset lives: a ``data_dir`` given by the user, or under ``$LIGHTNING_ADAPTERS_DATA``.

Shipped configs cannot know where a user keeps the public datasets, so they name ``data_dir`` relative to one
environment variable (``${LIGHTNING_ADAPTERS_DATA}/financial_phrasebank``). `dataset_folder` expands it and, when the
variable is unset or the folder is missing, says which dataset is needed, where its card is and how to point at it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from lightning_adapters.errors import UserInputError

DATA_ENV = "LIGHTNING_ADAPTERS_DATA"
_VARIABLE = re.compile(r"\$\{?(\w+)\}?")


def dataset_folder(data_dir: str | os.PathLike, dataset: str, pack: str) -> Path:
    """The existing folder ``data_dir`` names (``~`` and ``$VARS`` expanded), or a one-line error.

    Args:
        data_dir: the folder as the user or a config wrote it.
        dataset: the dataset's name for the message, e.g. "Financial PhraseBank".
        pack: the pack folder under ``tasks/`` whose ``DATA_CARD.md`` says where to get the data.
    """
    text = str(data_dir)
    fix = (f"get {dataset} (source and license: tasks/{pack}/DATA_CARD.md) and pass --data.init_args.data_dir "
           f"<its folder>, or set {DATA_ENV} to the folder that holds it")
    unset = [name for name in _VARIABLE.findall(text) if name not in os.environ]
    if unset:
        raise UserInputError(f"data_dir '{text}' uses ${unset[0]}, which is not set — {fix}")
    folder = Path(os.path.expandvars(text)).expanduser()
    if not folder.is_dir():
        raise UserInputError(f"data_dir '{folder}' is not a folder ({dataset} is not bundled) — {fix}")
    return folder
