"""The one exception type for bad user input.

Every problem a user can fix (a wrong path, a missing column, an adapter saved for another base model) raises
`UserInputError` with a single line that names the problem and the fix. The CLI prints that line and exits with
status 2 instead of a traceback; Python users catch it like any `ValueError`.
"""


class UserInputError(ValueError):
    """Bad input from the user: the message names the problem and how to fix it, on one line."""
