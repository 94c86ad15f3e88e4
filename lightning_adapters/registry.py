"""Which classes an adapter folder may name: ours, plus those a user registers. Loading never imports a module.

An adapter folder's config names its strategy and head by ``class_path``. Importing that path would run any module a
downloaded folder names (a ``payload.py`` beside it, when the folder is on ``sys.path``), so classes are looked up
instead: every `Strategy` and `TaskHead` subclass defined in ``lightning_adapters``, and the classes a user passes to
`register_adapter_class` or as ``load_adapter(..., allowed_classes=[...])``. Their ``init_args`` are checked against
the constructor's signature and type hints, so a corrupt config gives one line, not a ``TypeError`` traceback.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Iterable, Sequence
from typing import Any, Literal, Union

from lightning_adapters.errors import UserInputError, first_line
from lightning_adapters.heads import TaskHead
from lightning_adapters.patterns import check_pattern
from lightning_adapters.strategies import Strategy
from lightning_adapters.strategies.base import class_path

KINDS = (Strategy, TaskHead)
_REGISTERED: dict[str, type] = {}


def register_adapter_class(cls: type) -> type:
    """Let `load_adapter` build ``cls`` (your own `Strategy` or `TaskHead` subclass) from adapter folders.

    Register only classes whose code you trust; usable as a class decorator. Returns ``cls``.
    """
    _REGISTERED[class_path(_checked(cls))] = cls
    return cls


def _checked(cls: Any) -> type:
    if not (isinstance(cls, type) and issubclass(cls, KINDS)):
        raise UserInputError(f"{cls!r} is not a Strategy or TaskHead subclass — register only your strategy and "
                             "head classes")
    return cls


def known_classes(expected: type, allowed: Iterable[type] = ()) -> dict[str, type]:
    """class_path -> class for every ``expected`` subclass an adapter config may name."""
    found, stack = {}, [expected]
    while stack:  # subclasses of subclasses: a head deriving from ClassificationHead is a TaskHead too
        for sub in stack.pop().__subclasses__():
            stack.append(sub)
            if sub.__module__.split(".")[0] == "lightning_adapters" and not inspect.isabstract(sub):
                found[class_path(sub)] = sub
    extra = {**_REGISTERED, **{class_path(_checked(cls)): cls for cls in allowed}}
    found.update({path: cls for path, cls in extra.items() if issubclass(cls, expected)})
    return found


def build_from_config(config: Any, expected: type, what: str, allowed: Iterable[type] = ()):
    """Instantiate ``config["class_path"]`` with its ``init_args`` if it names a known ``expected`` class."""
    if not isinstance(config, dict) or not isinstance(config.get("class_path"), str):
        raise UserInputError(f"the {what} entry of the adapter config has no class_path — the adapter config is "
                             "corrupt; save the adapter again")
    path = config["class_path"]
    cls = known_classes(expected, allowed).get(path)
    if cls is None:
        raise UserInputError(f"'{path}' is not a {expected.__name__} of lightning-adapters or one you registered — "
                             f"if you trust the code that defines it, import it and call "
                             f"lightning_adapters.register_adapter_class(<class>) or pass load_adapter(..., "
                             f"allowed_classes=[<class>])")
    init_args = config.get("init_args", {})
    check_init_args(cls, init_args, what)
    try:
        return cls(**init_args)
    except UserInputError:
        raise
    except (TypeError, ValueError) as err:  # a user class's own checks, or a hint we could not read
        first = first_line(err)
        raise UserInputError(f"cannot build {what} {cls.__name__} from the adapter config ({first}) — the adapter "
                             "config is corrupt; save the adapter again") from err


def check_init_args(cls: type, init_args: Any, what: str) -> None:
    """Refuse ``init_args`` that are not a dict of ``cls``'s constructor arguments with values of the hinted kinds.

    Arguments named ``*_modules`` are PEFT-style target specs: a string there is a regex, checked before any match.
    """
    if not isinstance(init_args, dict):
        raise UserInputError(f"init_args of {what} {cls.__name__} is a {type(init_args).__name__}, not a mapping — "
                             "the adapter config is corrupt; save the adapter again")
    params = {n: p for n, p in inspect.signature(cls.__init__).parameters.items() if n != "self"}
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # noqa: BLE001 — an unresolvable hint: the constructor's own checks remain
        hints = {}
    open_ended = any(p.kind is p.VAR_KEYWORD for p in params.values())  # **kwargs: its own checks decide
    for key, value in init_args.items():
        if key not in params and not open_ended:
            raise UserInputError(f"{what} {cls.__name__} takes no argument '{key}' (it takes "
                                 f"{', '.join(params) or 'none'}) — the adapter config is corrupt or from another "
                                 "version")
        if key in hints and not fits(value, hints[key]):
            raise UserInputError(f"{what} {cls.__name__}: {key}={_short(value)} should be {kind_name(hints[key])} — "
                                 "the adapter config is corrupt; save the adapter again")
        if key.endswith("_modules") and isinstance(value, str):
            check_pattern(value, f"{what} {cls.__name__} {key}")


def fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value matches a type hint (hints this does not model are accepted: the constructor checks)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (Union, types.UnionType):
        return any(fits(value, arg) for arg in args)
    if origin is Literal:
        return any(value == arg and type(value) is type(arg) for arg in args)
    if hint is type(None) or hint is None:
        return value is None
    if hint in (bool, int, float, str):  # bool is an int in Python, not in a config
        kinds = {bool: (bool,), int: (int,), float: (int, float), str: (str,)}[hint]
        return isinstance(value, kinds) and (hint is bool or not isinstance(value, bool))
    if origin in (list, tuple, Sequence):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(fits(v, a) for v, a in zip(value, args, strict=True))
        return not args or all(fits(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and (not args or all(fits(v, args[1]) for v in value.values()))
    return isinstance(value, hint) if isinstance(hint, type) else True


def kind_name(hint: Any) -> str:
    """``int``, ``list[str] | None``, ``Literal['first', 'mean']``: a type hint as a user reads it."""
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
