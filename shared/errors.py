"""Errors about the user's input, phrased so the user can fix it."""

from __future__ import annotations

import re

# Values quoted in messages are cut to this many characters: a 1 MB string must not
# become a 1 MB failure reason in the report.
SHOWN_CHARS = 80


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """``repr(value)``, cut to ``limit`` characters with a note of the full length."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


# Characters a terminal acts on rather than shows: C0 and C1 controls (ESC starts the ANSI
# sequences that clear a screen or recolour it), DEL, and the bidirectional overrides and
# isolates that reorder what is shown.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def escaped(text: str, keep: str = "", as_json: bool = False) -> str:
    """``text`` with every control character written as an escape (``\\x1b``; ``\\u001b`` in
    JSON text, where it stays valid JSON), except those in ``keep``.

    For whatever reaches a terminal: names come from input files, and a category named
    ``"\\x1b[2J"`` must be shown, not clear the screen.
    """
    def escape(match: re.Match) -> str:
        char = match.group()
        if char in keep:
            return char
        return f"\\u{ord(char):04x}" if as_json else char.encode("unicode_escape").decode("ascii")
    return _CONTROLS.sub(escape, text)


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
