"""The one exception type for problems a user can fix.

The CLI prints a `LinkedOutError` as a single line and exits with code 2; anything else is a bug
and keeps its traceback.
"""

import re
from collections.abc import Callable


def first_line(error: BaseException, limit: int = 300) -> str:
    """An exception's message as a short reason for a one-line error: its first line, without
    the Rust source location Lance appends, cut to `limit`; the type name when it is empty."""
    text = str(error).strip()
    if not text:
        return type(error).__name__
    text = text.splitlines()[0].split(", /")[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


class LinkedOutError(Exception):
    """Bad input or data: the message says what was wrong and what to do."""


class MissingItemsError(LinkedOutError, KeyError):
    """Item ids asked for that the store does not hold (or holds only as failures)."""

    def __init__(self, message: str, missing: list[str]):
        super().__init__(message)
        self.missing = missing

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0])


class SettingError(LinkedOutError):
    """A setting's value a run cannot use. It names settings as the Python API spells them
    (`frames=0: ...`, other settings quoted as `name`); the CLI shows the same error in flags
    (`--frames 0: ...`)."""

    UNSET = object()
    """The value of a setting that was not given (`pass exactly one of ...`)."""

    def __init__(self, setting: str, value: object, reason: str):
        shown = "" if value is SettingError.UNSET else f"={value!r}"
        super().__init__(f"{setting}{shown}: {reason}")
        self.setting = setting
        self.value = value
        self.reason = reason

    def with_flags(self, flag_of: Callable[[str], str]) -> str:
        if self.value is SettingError.UNSET:
            shown = ""
        else:
            shown = f" {self.value!r}" if isinstance(self.value, str) else f" {self.value}"
        reason = re.sub(r"`(\w+)`", lambda m: flag_of(m.group(1)), self.reason)
        return f"{flag_of(self.setting)}{shown}: {reason}"
