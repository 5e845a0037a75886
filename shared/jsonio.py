"""Reading input JSON with clear errors, and writing reports atomically."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any, BinaryIO

from shared import storage
from shared.artifacts import write_atomic_with
from shared.errors import InputFileError, shown
from shared.files import decode_utf8


class InvalidNumber:
    """What a reader gets for ``NaN``, ``Infinity`` or an overflowing number such as ``1e999``.

    Python's json module accepts these, but they are not JSON and no field can use them:
    this marker is neither a number nor a string, so every field check refuses it and
    names the field, while the rest of the file stays usable.
    """

    def __init__(self, literal: str):
        self.literal = literal

    def __repr__(self) -> str:
        return self.literal


def _parse_float(literal: str) -> float | InvalidNumber:
    value = float(literal)
    return value if math.isfinite(value) else InvalidNumber(literal)


def _parse_int(literal: str) -> int | InvalidNumber:
    # An integer too large for a float (1 followed by 400 digits) breaks every use of it
    # as a number (OverflowError): as unusable as Infinity.
    value = int(literal)
    try:
        float(value)
    except OverflowError:
        return InvalidNumber(literal if len(literal) <= 20 else f"{literal[:20]}... ({len(literal)} digits)")
    return value


class DuplicateKey(ValueError):
    """A JSON object names one key twice: json.loads would silently keep the last value."""


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise DuplicateKey(key)
        obj[key] = value
    return obj


class JsonProblem(ValueError):
    """A text that is not usable JSON; the message says why and where, without the file's name."""


def read_text(path: str | Path) -> str:
    """A file's or an object's text: UTF-8 (a byte-order mark is fine) and not empty, else an
    InputFileError (a StorageError naming the URL for an object that cannot be read)."""
    text = decode_utf8(storage.read_bytes(path), path)  # UnreadableFile is an InputFileError
    if not text.strip():
        raise InputFileError(path, "the file is empty")
    return text


def parse_json(text: str) -> Any:
    """One JSON value, refusing what json.loads lets through silently; raises JsonProblem."""
    try:
        data = json.loads(text, parse_constant=InvalidNumber, parse_float=_parse_float,
                          parse_int=_parse_int, object_pairs_hook=_unique_pairs)
    except DuplicateKey as exc:
        raise JsonProblem(f"the key {shown(exc.args[0])} appears twice in one JSON object "
                          f"(only one can be used; remove or rename the other)") from None
    except json.JSONDecodeError as exc:
        raise JsonProblem(f"not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from None
    except RecursionError:
        raise JsonProblem("not usable JSON: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer literal of thousands of digits
        raise JsonProblem(f"not usable JSON: {exc}") from None
    bad = lone_surrogate_at(data, "")
    if bad is not None:
        # "\ud800" escapes parse, but such a string is not text: Redis, files and
        # the models would refuse it later, after the run was registered.
        raise JsonProblem(f"{bad or 'the document'}: a lone surrogate (an escape "
                          f"such as \\ud800 without its pair) is not text")
    return data


def read_json(path: str | Path) -> Any:
    """Load a JSON file (or object), turning every way it can be unusable into an InputFileError."""
    try:
        return parse_json(read_text(path))
    except JsonProblem as exc:
        raise InputFileError(path, str(exc)) from None


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so that readers see either the old file or the whole new one, synced to the
    disk; a write that fails (a full disk: DiskFull naming the folder) leaves no temporary file."""

    def dump(f: BinaryIO) -> None:
        text = io.TextIOWrapper(f, encoding="utf-8", write_through=True)
        # allow_nan=False: NaN is not JSON; a report containing it is a bug to surface.
        json.dump(data, text, ensure_ascii=False, indent=2, allow_nan=False)
        text.write("\n")
        text.detach()  # the file stays open for write_atomic_with to sync and close

    write_atomic_with(Path(path), dump, durable=True)


def lone_surrogate_at(value: Any, where: str) -> str | None:
    """The path of the first string (value or object key) that is not encodable text, or None."""
    if isinstance(value, str):
        return None if _is_text(value) else where
    if isinstance(value, dict):
        for key, child in value.items():
            if not _is_text(key):
                return f"{where}.{shown(key)}"
            found = lone_surrogate_at(child, f"{where}.{key}")
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, child in enumerate(value):
            found = lone_surrogate_at(child, f"{where}[{i}]")
            if found is not None:
                return found
    return None


def _is_text(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def invalid_number_at(value: Any, where: str) -> str | None:
    """The path (``where.a[2]``) of the first NaN/Infinity inside ``value``, or None.

    For values carried along unexamined (an object's extra fields): they end up in
    stored JSON, which must stay valid.
    """
    if isinstance(value, InvalidNumber):
        return where
    children = value.items() if isinstance(value, dict) else (
        enumerate(value) if isinstance(value, list) else ())
    for key, child in children:
        found = invalid_number_at(child, f"{where}[{key}]" if isinstance(key, int) else f"{where}.{key}")
        if found:
            return found
    return None
