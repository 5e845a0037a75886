"""Errors about the user's input, phrased so the user can fix it."""

from __future__ import annotations

# Values quoted in messages are cut to this many characters: a 1 MB string must not
# become a 1 MB failure reason in the report.
SHOWN_CHARS = 80


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """``repr(value)``, cut to ``limit`` characters with a note of the full length."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


class InputFileError(Exception):
    """An input file cannot be used at all: the command stops, nothing is registered."""

    def __init__(self, path: object, message: str):
        super().__init__(f"{path}: {message}")
        self.path = str(path)


class RecordError(Exception):
    """One record of an input file is bad: that record fails alone, the run goes on."""

    def __init__(self, path: object, record: str, field: str, message: str):
        super().__init__(f"{path}: record {record}: field {field!r}: {message}")
        self.path = str(path)
        self.record = record
        self.field = field
