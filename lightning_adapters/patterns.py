"""Target-module regexes read from adapter configs are checked before they are ever matched.

PEFT's ``target_modules`` (and our ``*_modules`` arguments) may be a regex matched against every module name.
Python's ``re`` backtracks: ``(.*.*)*X`` takes exponential time on a 40-character name, and a chain of many ``.*``
polynomial time of that degree, so a downloaded config could hang loading. Module names are short and real target
patterns simple (``.*\\.(q|v)_proj``, ``.*layers\\.\\d+\\.mlp.*``), so instead of matching under a time budget we
refuse, before any match, what can backtrack badly: a repeat inside a repeat, an alternation inside a repeat, a
backreference, more than `MAX_REPEATS` repeats in all, or more than `MAX_LENGTH` characters.
"""

from __future__ import annotations

import re

try:  # the parser `re` itself uses: Python 3.11+ names it re._parser
    from re import _parser as sre_parse
except ImportError:  # Python 3.10
    import sre_parse  # type: ignore[no-redef]

from lightning_adapters.errors import UserInputError

MAX_LENGTH = 1000
MAX_REPEATS = 4  # a failing match costs about (name length) ** repeats steps: 60**4 is still quick
_REPEATS = {sre_parse.MAX_REPEAT, sre_parse.MIN_REPEAT, getattr(sre_parse, "POSSESSIVE_REPEAT", None)}
_BACKREFS = {sre_parse.GROUPREF, sre_parse.GROUPREF_EXISTS, getattr(sre_parse, "GROUPREF_IGNORE", None)}
_FIX = "use a list of module names or .suffixes, or a simpler regex"


def check_pattern(pattern: str, where: str) -> None:
    """Raise `UserInputError` unless ``pattern`` is a valid regex that cannot backtrack catastrophically."""
    if len(pattern) > MAX_LENGTH:
        raise UserInputError(f"{where}: the regex is {len(pattern)} characters long (at most {MAX_LENGTH}) — {_FIX}")
    try:
        parsed = sre_parse.parse(pattern)
    except re.error as err:
        raise UserInputError(f"{where}: {pattern!r} is not a valid regex ({err}) — {_FIX}") from err
    problem = _problem(parsed, inside_repeat=False, count=[0])
    if problem:
        raise UserInputError(f"{where}: the regex {_short(pattern)} {problem} and could take hours to match — {_FIX}")


def _problem(items, inside_repeat: bool, count: list[int]) -> str | None:
    """What makes the parsed pattern ``items`` slow to match, or None."""
    for op, av in items:
        if op in _BACKREFS:
            return "uses a backreference"
        repeats = op in _REPEATS and av[1] > 1
        if repeats:
            if inside_repeat:
                return "repeats a group that itself repeats"
            count[0] += 1
            if count[0] > MAX_REPEATS:
                return f"has more than {MAX_REPEATS} repeats (*, +, {{m,n}})"
        if op is sre_parse.BRANCH and inside_repeat:
            return "repeats a group with alternatives"
        for sub in _subpatterns(av):
            found = _problem(sub, inside_repeat or repeats, count)
            if found:
                return found
    return None


def _subpatterns(av) -> list:
    """The nested sub-patterns in an opcode's argument (groups, repeat bodies, alternatives, lookarounds)."""
    if isinstance(av, sre_parse.SubPattern):
        return [av]
    if isinstance(av, (list, tuple)):
        return [sub for item in av for sub in _subpatterns(item)]
    return []


def _short(pattern: str) -> str:
    return repr(pattern) if len(pattern) <= 60 else repr(pattern[:57] + "...")
