"""The one exception type for problems a user can fix.

The CLI prints a `LinkedOutError` as a single line and exits with code 2; anything else is a bug
and keeps its traceback.
"""


class LinkedOutError(Exception):
    """Bad input or data: the message says what was wrong and what to do."""


class MissingItemsError(LinkedOutError, KeyError):
    """Item ids asked for that the store does not hold (or holds only as failures)."""

    def __init__(self, message: str, missing: list[str]):
        super().__init__(message)
        self.missing = missing

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0])
