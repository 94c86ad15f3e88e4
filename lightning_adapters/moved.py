"""Modules that moved when the package was grouped by part (model side, data side, packs): importing an old path —
from code, or as a ``class_path`` in an older config — fails with one line naming the new module, instead of a bare
"No module named"."""

from __future__ import annotations

import importlib.abc
import sys

MOVED = {
    "checkpoint": "lightning_adapters.adapter_folder (load_adapter: lightning_adapters.load_adapter)",
    "weight_probe": "lightning_adapters.base_fingerprint",
    "conll": "lightning_adapters.data.conll_format",
    "data_location": "lightning_adapters.data.data_location",
    "dialogue_data": "lightning_adapters.data.dialogue",
    "loading": "lightning_adapters.data.loaders",
    "qa_data": "lightning_adapters.data.question_answering",
    "readers": "lightning_adapters.data.readers",
    "seq2seq_data": "lightning_adapters.data.summarization",
    "splits": "lightning_adapters.data.splits",
    "squad_format": "lightning_adapters.data.squad_format",
    "token_data": "lightning_adapters.data.token_classification",
}


def moved_message(name: str) -> str:
    return (f"lightning_adapters.{name} has moved to {MOVED[name]}: import from there, or take the class from the "
            "package root (`lightning_adapters.<Class>` in a config)")


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Answers only for the old names above (``import lightning_adapters.token_data``); every other import passes."""

    def find_spec(self, fullname: str, path=None, target=None):
        package, _, name = fullname.partition(".")
        if package == "lightning_adapters" and name in MOVED:
            raise ModuleNotFoundError(moved_message(name), name=fullname)
        return None


def package_getattr(name: str):
    """The package's ``__getattr__``: jsonargparse resolves a config's ``class_path`` attribute by attribute."""
    if name in MOVED:
        raise AttributeError(moved_message(name), name=name)
    raise AttributeError(f"module 'lightning_adapters' has no attribute '{name}'", name=name)


def install() -> None:
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())  # last: a real module of that name, if ever added again, wins
