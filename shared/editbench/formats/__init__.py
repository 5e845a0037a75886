"""The public editing benchmarks, read in the layouts their users download (one module each),
and any other file of records through a field mapping (``records``).

``read_native`` gives a benchmark's categories under evalfleet's names, each pair with the
benchmark's own fields; evalfleet's own shapes (``shared/editbench/data.py``) are read there.
A format is detected where the layout is unambiguous, and ``--format`` always names it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared import storage
from shared.editbench.formats import gedit, imgedit, kris, rise
from shared.editbench.formats.containers import JSON_LINES_SUFFIXES, file_records
from shared.editbench.formats.fields import FOLDER_SOURCE, Reading
from shared.editbench.formats.records import Group, grouped
from shared.editbench.formats.tables import column_names, is_table, table_files
from shared.errors import InputFileError
from shared.jsonio import JsonProblem, parse_json, read_text

RECORDS = "records"
FORMATS = {gedit.NAME: gedit.DESCRIPTION, kris.NAME: kris.DESCRIPTION, imgedit.NAME: imgedit.DESCRIPTION,
           rise.NAME: rise.DESCRIPTION,
           RECORDS: "any list, JSON lines, id map or parquet/arrow table of records, read through --field"}
MAPPINGS: dict[str, dict[str, str]] = {gedit.NAME: gedit.MAPPING, kris.NAME: kris.MAPPING,
                                       imgedit.NAME: imgedit.MAPPING, rise.NAME: rise.MAPPING, RECORDS: {}}


@dataclass
class NativeRead:
    format: str
    groups: list[Group]
    failures: list[tuple[str, str]] = field(default_factory=list)  # (key, reason)
    input_files: list[str | Path] = field(default_factory=list)  # the files read: part of the run's identity


def native_format(path: str | Path, reading: Reading) -> str:
    """The benchmark format ``path`` (a file or a folder, local or in a store) is in: the named
    one, the detected one, or "" for one of evalfleet's own shapes."""
    if reading.format:
        if reading.format not in FORMATS:
            raise InputFileError(path, f"--format {reading.format!r}: use one of {', '.join(FORMATS)}")
        return reading.format
    if storage.is_folder(path):
        return _folder_format(path)
    if is_table(path):
        return gedit.NAME if gedit.matches_columns(column_names(path)) else _records_or_refused(path, reading)
    detected = _json_format(path)
    return detected or (RECORDS if reading.fields else "")


def read_native(path: str | Path, fmt: str, reading: Reading) -> NativeRead:
    """The categories of the benchmark at ``path`` in format ``fmt``."""
    mapping = {**MAPPINGS[fmt], **reading.fields}
    groups: dict[str, Group] = {}
    result = NativeRead(fmt, [])
    if fmt == kris.NAME:
        files = kris.annotation_files(path)
        if not files:
            raise InputFileError(path, f"no <category>/{kris.ANNOTATION} in this folder (KRIS-Bench's layout)")
        for file in files:
            folder = storage.parent(file)
            base = storage.resolve_under(reading.images, storage.name(folder)) if reading.images else folder
            records = _with_folder(file_records(file), storage.name(folder))
            result.failures += grouped(records, mapping, file, base, groups)[1]
    else:
        folder = storage.is_folder(path)
        files = table_files(path) if folder else [path]
        if not files:
            raise InputFileError(path, "no parquet or arrow files in this folder")
        # Relative image paths are under the folder itself (made absolute), or beside the file.
        base = reading.images or (storage.join(path) if folder else storage.parent(path))
        for file in files:
            prefix = f"{_relative(file, path)} " if folder else ""
            result.failures += grouped(file_records(file, prefix), mapping, file, base, groups)[1]
    result.groups = list(groups.values())
    result.input_files = files
    return result


def _with_folder(records, folder: str):
    for record in records:
        record.implied[FOLDER_SOURCE] = folder
        yield record


def _relative(file: str | Path, folder: str | Path) -> str:
    """``file``'s path under ``folder`` (a shard's name in messages)."""
    if storage.is_url(file):
        return str(file)[len(str(folder).rstrip("/")) + 1:]
    return str(Path(file).relative_to(folder))


def _folder_format(path: str | Path) -> str:
    if kris.annotation_files(path):
        return kris.NAME
    files = table_files(path)
    if files and gedit.matches_columns(column_names(files[0])):
        return gedit.NAME
    if files:
        return RECORDS
    raise InputFileError(path, f"a folder, but neither KRIS-Bench's (<category>/{kris.ANNOTATION}) nor "
                               "parquet/arrow shards (GEdit-Bench's dataset download); give a file, or "
                               "--format")


def _records_or_refused(path: str | Path, reading: Reading) -> str:
    if reading.fields:
        return RECORDS
    raise InputFileError(path, f"a table of the columns {', '.join(column_names(path))}, not GEdit-Bench's "
                               f"({', '.join(gedit.COLUMNS)}); name its fields with --field "
                               "(category=..., pair_id=..., edit_instruction=..., original_image_path=...)")


def _json_format(path: str | Path) -> str:
    """A JSON or JSON-lines file's benchmark format, or "" when it is none of them."""
    text = read_text(path)
    try:
        data: Any = parse_json(text)
    except JsonProblem:
        data = None
    if storage.suffix(path).lower() in JSON_LINES_SUFFIXES or data is None:
        try:
            first = next((r.raw for r in file_records(path) if not r.problem), None)
        except InputFileError:
            return ""  # none of these: evalfleet's own reader says what the file is
        return gedit.NAME if gedit.matches(first) else ""
    for module in (imgedit, rise, kris):
        if module.matches(data):
            return module.NAME
    return gedit.NAME if isinstance(data, dict) and gedit.matches(data) else ""
