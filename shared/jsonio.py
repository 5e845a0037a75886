"""Reading input JSON with clear errors, and writing reports atomically."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from shared.errors import InputFileError


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


def read_json(path: Path) -> Any:
    """Load a JSON file, turning every way it can be unusable into an InputFileError."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise InputFileError(path, f"cannot read the file ({exc.strerror})") from None
    try:
        # utf-8-sig: a byte-order mark (common in files saved on Windows) is not an error.
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputFileError(path, f"not UTF-8 text (bad byte at offset {exc.start})") from None
    if not text.strip():
        raise InputFileError(path, "the file is empty")
    try:
        return json.loads(text, parse_constant=InvalidNumber, parse_float=_parse_float)
    except json.JSONDecodeError as exc:
        raise InputFileError(
            path, f"not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
        ) from None
    except RecursionError:
        raise InputFileError(path, "not usable JSON: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer literal of thousands of digits
        raise InputFileError(path, f"not usable JSON: {exc}") from None


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so that readers see either the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, ensure_ascii=False, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
