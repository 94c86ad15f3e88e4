"""Which transformer layers get adapters: the ``layers`` option of every strategy that places modules in layers
(bottleneck, LoRA, IA3, prefix tuning), with one meaning everywhere.

A *layer* is a block of the model's stack of blocks: the module list that numbers them (``encoder.layer.<i>`` in
BERT, ``model.layers.<i>`` in Llama, ``transformer.h.<i>`` in GPT-2). Every place an adapter would go lies in one;
``layers`` keeps the places in the chosen blocks. An encoder-decoder has two stacks (``encoder.block``,
``decoder.block``): an index chooses that block in each, as PEFT's ``layers_to_transform`` does, and a negative index
or ``last k`` counts from the end of each stack.

``layers`` is one of:

- ``None`` (the default) or ``"all"``: every layer;
- an index, or a list of them: ``3``, ``[0, 1, -1]`` (negative: from the end, ``-1`` is the last layer);
- a string of comma-separated parts, each an index, a slice ``start:stop`` (Python's: ``stop`` excluded, either end
  may be left out or negative), ``first k`` or ``last k``: ``"last 4"``, ``"6:"``, ``"0:2, -2:"``;
- a list mixing indices and such parts.

An index beyond a stack, an empty slice, or ``first``/``last`` more than a stack holds is refused in one line.
"""

from __future__ import annotations

import re

from torch import nn

from lightning_adapters.errors import UserInputError

Layers = int | str | list[int | str] | None
_PART = re.compile(r"(?P<index>[+-]?\d+)|(?P<start>[+-]?\d*):(?P<stop>[+-]?\d*)|(?P<end>first|last)\s+(?P<k>\d+)|all")
_SPEC_HELP = "e.g. layers: [0, 1, -1], \"last 4\", \"6:\" or \"0:2, -2:\""


def check_layers(spec: Layers, method: str) -> None:
    """Refuse a ``layers`` value that cannot be read, in one line, before any model loads."""
    parts(spec, method)


def parts(spec: Layers, method: str) -> list[re.Match | int]:
    if spec is None:
        return []
    items = spec if isinstance(spec, list) else [spec]
    if isinstance(spec, list) and not spec:
        raise UserInputError(f"{method} layers is an empty list — leave layers out for every layer, or name some "
                             f"({_SPEC_HELP})")
    found: list[re.Match | int] = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int | str):
            raise UserInputError(f"{method} layers: {item!r} is neither an index nor a string of parts — {_SPEC_HELP}")
        if isinstance(item, int):
            found.append(item)
            continue
        for text in item.split(","):
            match = _PART.fullmatch(text.strip())
            if match is None:
                raise UserInputError(f"{method} layers: cannot read {text.strip()!r} — give indices, slices "
                                     f"start:stop, 'first k', 'last k' or 'all' ({_SPEC_HELP})")
            found.append(match)
    return found


def resolve(spec: Layers, size: int, stack: str, method: str) -> set[int]:
    """The indices (0 .. size-1) ``spec`` chooses in a stack of ``size`` layers named ``stack``."""
    chosen: set[int] = set()
    bounds = f"the {size} layers of {stack} (0..{size - 1}, or -{size}..-1)"
    for part in parts(spec, method):
        if isinstance(part, int) or part["index"] is not None:
            index = part if isinstance(part, int) else int(part["index"])
            if not -size <= index < size:
                raise UserInputError(f"{method} layers: index {index} is out of range for {bounds} — pick indices "
                                     "inside it")
            chosen.add(index % size)
        elif part["end"] is not None:
            count = int(part["k"])
            if not 1 <= count <= size:
                raise UserInputError(f"{method} layers: '{part[0]}' asks for {count} of {bounds} — give 1 to {size}")
            chosen.update(range(size - count, size) if part["end"] == "last" else range(count))
        elif part["start"] is not None:
            start, stop = (int(value) if value else None for value in (part["start"], part["stop"]))
            picked = range(size)[start:stop]
            if not picked:
                raise UserInputError(f"{method} layers: the slice '{part[0]}' holds none of {bounds} — widen it")
            chosen.update(picked)
        else:  # "all"
            chosen.update(range(size))
    return chosen


def block_of(model: nn.Module, name: str) -> tuple[str, int, int] | None:
    """(stack path, block index, stack size) of the block holding module ``name``: the first numbered module list on
    its path; None for a module outside any stack (embeddings, pooler, LM head)."""
    parts_ = name.split(".")
    for end in range(len(parts_) - 1):
        if parts_[end + 1].isdigit():
            stack = ".".join(parts_[:end + 1])
            container = model.get_submodule(stack)
            if isinstance(container, nn.ModuleList):
                return stack, int(parts_[end + 1]), len(container)
    return None


def keep_layers(model: nn.Module, names: list[str], spec: Layers, method: str) -> list[str]:
    """The names among ``names`` (module paths in ``model``) that lie in the layers ``spec`` chooses; all of them
    for ``None``. Choosing no place at all is refused in one line."""
    if spec is None:
        return names
    chosen: dict[str, set[int]] = {}
    kept = []
    for name in names:
        block = block_of(model, name)
        if block is None:
            continue
        stack, index, size = block
        if stack not in chosen:
            chosen[stack] = resolve(spec, size, stack, method)
        if index in chosen[stack]:
            kept.append(name)
    if not kept:
        raise UserInputError(f"{method} layers {spec!r} keeps none of its {len(names)} places ({names[:1]}) — "
                             "they are not inside a numbered stack of layers; leave layers out")
    return kept
