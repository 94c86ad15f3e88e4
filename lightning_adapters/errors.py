"""The one exception type for bad user input.

Every problem a user can fix (a wrong path, a missing column, an adapter saved for another base model) raises
`UserInputError` with a single line that names the problem and the fix. The CLI prints that line and exits with
status 2 instead of a traceback; Python users catch it like any `ValueError`.
"""


class UserInputError(ValueError):
    """Bad input from the user: the message names the problem and how to fix it, on one line."""


def first_line(err: BaseException, limit: int | None = None) -> str:
    """The first line of ``err``'s message (its type name when empty), cut to ``limit`` characters: what a one-line
    error quotes of an exception from a library."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:limit]
