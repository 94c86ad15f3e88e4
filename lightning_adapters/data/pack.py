"""A domain pack as a record: its codec, the defaults and columns it sets, where its data lives, its sample and card.

A pack is one folder under ``tasks/`` (a package: the scan in setup.py finds it) holding a ``sample/`` we wrote, a
``DATA_CARD.md`` and an ``__init__.py`` that declares its DataModule, the class configs name::

    class FinanceSentimentDataModule(TextClassificationDataModule):
        \"\"\"Financial PhraseBank sentiment (negative, neutral, positive); without arguments, the bundled sample.\"\"\"

        pack = Pack("Financial PhraseBank", sample={"train_file": "train.csv", ...}, layout=phrasebank_files,
                    defaults={"text_column": "sentence", "label_names": LABEL_NAMES, "test_fraction": 0.2})

Declaring ``pack`` is all (`SplitDataModule.__init_subclass__` calls `build_pack_init`): the class gets an
``__init__`` whose signature is the codec's — ``defaults`` replacing its defaults, ``fixed`` options taken out — plus
``data_dir`` and the pack's own ``options``, and a docstring made from the codec's argument docs and ``docs``. So
``--data.help <pack class>`` lists every option with the pack's defaults, and no pack re-documents its codec.

The source block, once for every pack: ``data_dir``, ``train_file`` and ``hub_dataset`` are each a full source (at
most one); ``data_dir`` is read through the dataset's own ``layout``; with none of them, the bundled sample. Files the
user names win over those the layout or the sample give.
"""

from __future__ import annotations

import inspect
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_adapters.data.data_location import dataset_folder
from lightning_adapters.errors import UserInputError

SOURCES = ("data_dir", "train_file", "hub_dataset")  # each a full source of training data


@dataclass(frozen=True)
class Pack:
    """What a pack declares.

    Args:
        dataset: the dataset's name in messages, e.g. "Financial PhraseBank".
        sample: codec option -> file in the pack's ``sample/`` folder, used when no source is given.
        layout: ``(folder, options) -> codec options`` (split files, label names...) of a ``data_dir`` folder.
        defaults: codec options with the pack's defaults (columns, label set, fractions, lengths).
        fixed: codec options the pack sets for good (not options of the pack).
        options: the pack's own options: name -> (type, default); kept as attributes of the DataModule.
        docs: help of options whose meaning the pack narrows, and of its own options.
        prepare: a last look at the codec options (given the pack's own options under their names): checks and
            defaults that depend on other options.
    """

    dataset: str
    sample: dict[str, str]
    layout: Callable[[Path, dict[str, Any]], dict[str, Any]] | None = None
    defaults: dict[str, Any] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)
    options: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    docs: dict[str, str] = field(default_factory=dict)
    prepare: Callable[[dict[str, Any]], None] | None = None

    def codec_options(self, options: dict[str, Any], folder: Path) -> dict[str, Any]:
        """The codec's options for the pack's options: the source block, the fixed options, ``prepare``."""
        options = dict(options)
        data_dir = options.pop("data_dir")
        given = [name for name in SOURCES if (data_dir if name == "data_dir" else options.get(name)) is not None]
        if len(given) > 1:
            raise UserInputError(f"pass only one of {' and '.join(given)} — each is a full source of training data")
        found: dict[str, Any] = {}
        if data_dir is not None:
            if self.layout is None:
                raise UserInputError(f"{self.dataset} has no data_dir layout — pass train_file")
            found = self.layout(dataset_folder(data_dir, self.dataset, folder.name), options)
        elif not given:  # the bundled sample
            found = {name: str(folder / "sample" / file) for name, file in self.sample.items()}
        options.update({name: value for name, value in found.items() if options.get(name) is None}, **self.fixed)
        if self.prepare is not None:
            self.prepare(options)
        for name in self.options:
            options.pop(name)
        return options


def build_pack_init(cls: type) -> None:
    """Give pack class ``cls`` (a codec subclass declaring ``pack``) its ``__init__``, signature and docstring."""
    pack: Pack = cls.pack
    codec = next(base for base in cls.__mro__[1:] if "pack" not in base.__dict__)
    folder = Path(sys.modules[cls.__module__].__file__).parent
    signature, docs = _pack_signature(pack, codec)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        options = {name: value for name, value in bound.arguments.items() if name != "self"}
        self.data_dir = options["data_dir"]
        for name in pack.options:  # before the codec runs: its hooks may read them (ECTSum's sentence_filter)
            setattr(self, name, options[name])
        codec.__init__(self, **pack.codec_options(options, folder))

    __init__.__signature__ = signature
    __init__.__qualname__ = f"{cls.__qualname__}.__init__"
    cls.__init__ = __init__
    summary = inspect.cleandoc(cls.__doc__ or codec.__doc__ or "").split("\n\n")[0]
    arguments = "\n".join(f"    {name}: {docs.get(name, '')}" for name in list(signature.parameters)[1:])
    cls.__doc__ = f"{summary}\n\nArgs:\n{arguments}\n"


def _pack_signature(pack: Pack, codec: type) -> tuple[inspect.Signature, dict[str, str]]:
    """The pack's parameters (``data_dir``, its own options, the codec's not fixed) and their help."""
    hints = typing.get_type_hints(codec.__init__)
    docs = _argument_docs(codec) | {"data_dir": f"{pack.dataset} folder (default: the bundled sample)"} | pack.docs
    unknown = (set(pack.defaults) | set(pack.fixed)) - set(inspect.signature(codec.__init__).parameters)
    if unknown:
        raise TypeError(f"pack {pack.dataset}: {codec.__name__} has no option(s) {', '.join(sorted(unknown))}")
    keyword = inspect.Parameter.POSITIONAL_OR_KEYWORD
    params = [inspect.Parameter("self", keyword), inspect.Parameter("data_dir", keyword, default=None,
                                                                   annotation=str | None)]
    params += [inspect.Parameter(name, keyword, default=default, annotation=kind)
               for name, (kind, default) in pack.options.items()]
    for name, param in list(inspect.signature(codec.__init__).parameters.items())[1:]:
        if name in pack.fixed:
            continue
        default, kind = pack.defaults.get(name, param.default), hints[name]
        if default is None and type(None) not in typing.get_args(kind):
            kind = kind | None  # a pack default of None (decided later, in ``prepare``) must be allowed
        params.append(inspect.Parameter(name, keyword, default=default, annotation=kind))
    return inspect.Signature(params), docs


def _argument_docs(codec: type) -> dict[str, str]:
    """``name -> help`` from the ``Args:`` section of ``codec``'s docstring (Google style)."""
    import docstring_parser

    return {param.arg_name: " ".join((param.description or "").split())
            for param in docstring_parser.parse(codec.__doc__ or "").params}
