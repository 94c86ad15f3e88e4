"""Predict from Python, without a Trainer: the rows ``lightning-adapters predict`` writes, for in-memory inputs.

    predictor = Predictor.from_adapter("runs/adapter")
    predictor.predict(["net sales rose", "the bank cut its outlook"])
    # [{"id": 0, "text": "net sales rose", "label": "positive", "probabilities": {...}}, ...]

A `Predictor` holds a trained `AdapterModule` (eval mode, on one device) and the DataModule of its task, built
without data files (`SplitDataModule.for_rows`). Inputs take the path a ``predict_file``'s rows take — the same
checks, the same truncation, the same batches and padding (`SplitDataModule.predict_loader`) — and each batch goes
through the module's own ``predict_step``, so the rows are the CLI's: label and probabilities, entities with
character spans, answer span and score, generated text. No second encoding path exists to drift from training.

Which DataModule: the ``data`` argument (a class, or an instance with your options), else the one the adapter's model
card names as its training data when that class is already imported and fits the head (a folder never makes us
import a module), else the head's task family (`TASK_DATA`). A generation head reads summarization or dialogue
rows, so without either it asks for ``data``.
"""

from __future__ import annotations

import inspect
import math
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device

from lightning_adapters.backbone import parse_dtype
from lightning_adapters.data import (
    DialogueDataModule,
    QADataModule,
    SplitDataModule,
    SummarizationDataModule,
    TextClassificationDataModule,
    TextCorpusDataModule,
    TokenClassificationDataModule,
    check_limits,
)
from lightning_adapters.errors import UserInputError
from lightning_adapters.heads import (
    ClassificationHead,
    GenerationHead,
    LanguageModelingHead,
    QuestionAnsweringHead,
    TaskHead,
    TokenClassificationHead,
)
from lightning_adapters.heads.base import check_head_fits_data
from lightning_adapters.model_card import CARD_NAME
from lightning_adapters.module import AdapterModule, load_adapter

# Head -> the DataModule of its task family (a subclass of the head finds its base here).
TASK_DATA: dict[type[TaskHead], type[SplitDataModule]] = {
    ClassificationHead: TextClassificationDataModule, TokenClassificationHead: TokenClassificationDataModule,
    QuestionAnsweringHead: QADataModule, LanguageModelingHead: TextCorpusDataModule}
GENERATION_DATA = (SummarizationDataModule, DialogueDataModule)  # one head, two row formats: the user picks
DEVICE_TYPES = ("cpu", "cuda", "mps")
Data = type[SplitDataModule] | SplitDataModule | None


class Predictor:
    """A trained adapter, ready to predict from texts or rows.

    Build one with `from_adapter` (an exported adapter folder) or `from_module` (a module in memory).

    Args:
        module: the trained module; it is put in eval mode and moved to ``device`` (and cast to ``dtype``).
        data: the DataModule that encodes inputs, set up (`SplitDataModule.for_rows`, or your own instance).
        device: ``cpu``, ``cuda``, ``cuda:<index>`` or ``mps``.
        dtype: dtype of the frozen base (``float32``, ``bfloat16``, ``float16``); adapters and head stay fp32.
        batch_size: inputs per forward pass (for question answering: questions, with all their windows).
    """

    def __init__(self, module: AdapterModule, data: SplitDataModule, device: str | torch.device = "cpu",
                 dtype: str | None = None, batch_size: int = 32) -> None:
        check_limits(batch_size=(batch_size, 1, math.inf))
        self.device = parse_device(device)
        self.module = module.to(device=self.device, dtype=parse_dtype(dtype)).eval()
        self.data, self.batch_size = data, batch_size

    @classmethod
    def from_adapter(cls, folder: str | os.PathLike, backbone: str | None = None, device: str | torch.device = "cpu",
                     dtype: str | None = None, batch_size: int = 32, allowed_classes: Iterable[type] = (),
                     data: Data = None, data_options: dict[str, Any] | None = None) -> Predictor:
        """The adapter exported to ``folder`` (`lightning_adapters.load_adapter`: base model and weights checked),
        on its base model (default: the recorded one; ``backbone`` names another copy of it).

        Args:
            data: the DataModule class (or instance) whose rows you give; default: the one the adapter's card
                names, else the head's task family.
            data_options: options of that class (e.g. ``max_length``, ``text_column``), as in a config's ``data``.
            Others: as `Predictor` and `lightning_adapters.load_adapter`.
        """
        parse_device(device)  # a bad device fails before a model is loaded
        module = load_adapter(folder, backbone, dtype, allowed_classes)
        return cls.from_module(module, device=device, batch_size=batch_size,
                               data=data if data is not None else recorded_data(folder, module.task_head),
                               data_options=data_options)

    @classmethod
    def from_module(cls, module: AdapterModule, tokenizer: str | None = None, device: str | torch.device = "cpu",
                    dtype: str | None = None, batch_size: int = 32, data: Data = None,
                    data_options: dict[str, Any] | None = None) -> Predictor:
        """A module in memory (e.g. right after training, or with `AdapterModule.set_active_adapters` chosen).

        Args:
            tokenizer: backbone alias, folder or hub id of the tokenizer (default: the module's backbone).
            Others: as `from_adapter`.
        """
        parse_device(device), parse_dtype(dtype)  # bad settings fail before the data's tokenizer loads
        return cls(module, build_data(module, tokenizer, data, data_options), device, dtype, batch_size)

    def predict(self, inputs: str | Sequence[str] | Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """One row per input (per question for QA), in input order, as ``lightning-adapters predict`` writes it.

        Args:
            inputs: a text, a list of texts, or a list of rows (dicts holding the columns a ``predict_file`` of the
                DataModule has: ``text``; ``question`` and ``context``; ``tokens`` or ``text``; ``source``;
                ``messages`` or ``instruction``; an optional ``id``). A row's ``id`` is kept, else its list index.
        """
        loader = self.data.predict_loader(as_rows(inputs, self.data), self.batch_size)
        rows: list[dict[str, Any]] = []
        with torch.inference_mode():
            for index, batch in enumerate(loader):
                rows += self.module.predict_step(move_data_to_device(batch, self.device), index)
        return rows

    def stream(self, item: str | dict[str, Any]) -> Iterator[str]:
        """The text a generation adapter generates for one input, in pieces as it is generated; the pieces join to
        the ``generated`` text `predict` gives it (`GenerationHead.stream`).

            for piece in predictor.stream("Summarise: net sales rose 5 %"):
                print(piece, end="", flush=True)
        """
        if self.module.parallel:  # refused before any encoding
            raise UserInputError("Parallel adapters predict side by side and cannot stream one text — "
                                 "set_active_adapters(<one adapter>) first")
        return stream_with(self.module.task_head, self.module.backbone, self.encode_one(item))

    def encode_one(self, item: str | dict[str, Any]) -> dict[str, Any]:
        """One input (a text or a row) as the batch `predict` would give the module, on the predictor's device."""
        if not isinstance(item, str | dict):
            raise UserInputError(f"stream takes one text or one row (dict), not a {type(item).__name__} — stream "
                                 "each input on its own")
        (batch,) = self.data.predict_loader(as_rows([item], self.data), 1)
        return move_data_to_device(batch, self.device)


def stream_with(head: TaskHead, backbone: torch.nn.Module, batch: dict[str, Any]) -> Iterator[str]:
    """``head.stream`` of one encoded input; a head that generates nothing is refused in one line."""
    if not isinstance(head, GenerationHead):
        raise UserInputError(f"this adapter's {type(head).__name__} does not generate text, so there is nothing to "
                             "stream — use predict()")
    return head.stream(backbone, batch)


def parse_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch device this machine has; anything else is one line naming the choices."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        parsed = None
    if parsed is None or parsed.type not in DEVICE_TYPES:
        raise UserInputError(f"unknown device {device!r} — use 'cpu', 'cuda', 'cuda:<index>' or 'mps'") from None
    count = torch.cuda.device_count() if parsed.type == "cuda" else int(torch.backends.mps.is_available())
    if parsed.type != "cpu" and (count == 0 or (parsed.index or 0) >= count):
        raise UserInputError(f"device '{device}' is not on this machine ({count} {parsed.type} device(s)) — use "
                             "device='cpu'" + (f" or one of {parsed.type}:0..{count - 1}" if count else ""))
    return parsed


def as_rows(inputs: Any, data: SplitDataModule) -> list[dict[str, Any]]:
    """``inputs`` as rows: texts become the rows ``data`` reads (`SplitDataModule.text_rows`); rows are copied."""
    if isinstance(inputs, str):
        inputs = [inputs]
    elif isinstance(inputs, dict):
        raise UserInputError("inputs is one dict — pass a list of rows ([{...}, ...]) or of texts")
    if not isinstance(inputs, list | tuple):
        raise UserInputError(f"inputs is a {type(inputs).__name__} — pass a text, a list of texts or a list of rows "
                             "(dicts)")
    if not inputs:
        raise UserInputError("inputs is empty — pass at least one text or row")
    kind = str if isinstance(inputs[0], str) else dict
    wrong = next((i for i, item in enumerate(inputs) if not isinstance(item, kind)), None)
    if wrong is not None:
        first = "a text (str)" if kind is str else "a row (dict)"
        raise UserInputError(f"input {wrong} is a {type(inputs[wrong]).__name__} but input 0 is {first} — pass all "
                             "texts (str) or all rows (dicts)")
    return data.text_rows(list(inputs)) if kind is str else [dict(row) for row in inputs]


def build_data(module: AdapterModule, tokenizer: str | None, data: Data, options: dict[str, Any] | None
               ) -> SplitDataModule:
    """The DataModule that encodes ``module``'s inputs, checked against its head and set up."""
    head, labels = module.task_head, module.labels_of(module.active_adapters[-1])
    data = task_data(head) if data is None else data
    if isinstance(data, SplitDataModule):
        if options:
            raise UserInputError("data_options go with a DataModule class, not an instance — build the instance with "
                                 "those options, or pass its class")
        check_head_fits_data(type(head), type(data), "pass the DataModule of this adapter's task as data")
        given = getattr(data, "label_names", None)
        if given is not None and given != labels:
            raise UserInputError(f"the data's label names {given} are not the adapter's {labels} — build "
                                 "the DataModule with the adapter's label_names")
        data.setup("predict")
        return data
    if not (isinstance(data, type) and issubclass(data, SplitDataModule)):
        raise UserInputError(f"data must be a DataModule class or instance (e.g. TextClassificationDataModule), not "
                             f"{data!r} — pass one")
    check_head_fits_data(type(head), data, "pass the DataModule of this adapter's task as data")
    options = dict(options or {})
    if labels is not None and "label_names" in inspect.signature(data).parameters:
        options.setdefault("label_names", labels)
    return data.for_rows(tokenizer or module.backbone_name, **options)


def task_data(head: TaskHead) -> type[SplitDataModule]:
    """The DataModule class of ``head``'s task family."""
    found = next((TASK_DATA[kind] for kind in type(head).__mro__ if kind in TASK_DATA), None)
    if found is not None:
        return found
    choices = " or ".join(f"data={kind.__name__}" for kind in GENERATION_DATA)
    raise UserInputError(f"{type(head).__name__} does not say which rows it reads — pass {choices} (whichever it "
                         "was trained on), or your DataModule class")


def recorded_data(folder: str | os.PathLike, head: TaskHead) -> type[SplitDataModule] | None:
    """The DataModule class the adapter's model card names as its training data (the CLI writes it), if that class
    is already imported and fits ``head``; None otherwise. Nothing is imported on a folder's word."""
    card = Path(folder) / CARD_NAME
    named = re.search(r"^\| Data \| `([\w.]+)`", card.read_text(errors="replace"), re.MULTILINE) if card.is_file() \
        else None
    if named is None:
        return None
    known = {f"{kind.__module__}.{kind.__qualname__}": kind for kind in subclasses(SplitDataModule)}
    found = known.get(named.group(1))
    if found is None:
        return None
    try:
        check_head_fits_data(type(head), found, "")
    except UserInputError:
        return None
    return found


def subclasses(kind: type) -> list[type]:
    """Every class derived from ``kind`` that is imported now."""
    return [sub for direct in kind.__subclasses__() for sub in (direct, *subclasses(direct))]
