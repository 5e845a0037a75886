"""The records of one file, whatever holds them: a parquet or arrow table, JSON lines, a JSON
list of records, or a JSON object mapping ids to records."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from shared import storage
from shared.editbench.formats.fields import KEY_SOURCE
from shared.editbench.formats.records import Record
from shared.editbench.formats.tables import is_table, table_rows
from shared.errors import InputFileError, shown
from shared.jsonio import JsonProblem, parse_json, read_text

JSON_LINES_SUFFIXES = (".jsonl", ".ndjson")


def file_records(path: str | Path, label_prefix: str = "") -> Iterator[Record]:
    """Each record of the file, labelled by its place ("row 3", "line 2", "[4]", "key '1082'")."""
    if is_table(path):
        for number, row in enumerate(table_rows(path), 1):
            yield Record(f"{label_prefix}row {number}", row)
        return
    text = read_text(path)
    if storage.suffix(path).lower() in JSON_LINES_SUFFIXES:
        yield from json_lines_records(text)
        return
    try:
        data = parse_json(text)
    except JsonProblem as exc:
        if not _several_values(text):
            raise InputFileError(path, str(exc)) from None
        yield from json_lines_records(text)
        return
    yield from json_records(path, data)


def json_records(path: str | Path, data: Any) -> Iterator[Record]:
    if isinstance(data, list):
        for i, entry in enumerate(data):
            yield Record(f"[{i}]", entry)
    elif isinstance(data, dict) and data and all(isinstance(v, dict) for v in data.values()):
        for key, entry in data.items():
            yield Record(f"key {shown(key)}", entry, implied={KEY_SOURCE: key})
    elif isinstance(data, dict):
        # One object: a JSON-lines file of one line.
        yield Record("line 1", data)
    else:
        raise InputFileError(path, f"expected records: a JSON list of objects, JSON lines, or an object "
                                   f"mapping ids to objects; found {shown(data, 40)}")


def json_lines_records(text: str) -> Iterator[Record]:
    # Split on "\n" only: str.splitlines() would also split inside a JSON string (U+2028).
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            yield Record(f"line {number}", parse_json(line))
        except JsonProblem as exc:
            yield Record(f"line {number}", None, problem=str(exc))


def _several_values(text: str) -> bool:
    """Several JSON values, one per line (the first line parses on its own)."""
    first = next((line for line in text.split("\n") if line.strip()), "")
    try:
        parse_json(first)
    except JsonProblem:
        return False
    return True


def first_record(path: str | Path) -> Any:
    """The first record of a file, for telling layouts apart (None when there is none)."""
    try:
        return next(iter(file_records(path)), Record("", None)).raw
    except InputFileError:
        return None
