"""How a benchmark's records become pairs: which of a record's fields is evalfleet's category,
pair id, instruction, description and image(s), and what else of the record the pair keeps.

A layout maps each of evalfleet's names (``NAMES``) to a field of the benchmark's records; a
source may join several fields with ``/`` (GEdit's pair id is ``instruction_language/key``),
and ``@key`` is the record's key in a file that maps ids to records (ImgEdit's, KRIS's),
``@folder`` the name of the folder holding the record's file (KRIS's category). ``--field
NAME=SOURCE`` replaces one entry of a layout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from shared.errors import shown

NAMES = ("category", "pair_id", "edit_instruction", "original_description", "original_image_path",
         "original_image_b64")
# Sources that are not a field of the record but where the record is.
KEY_SOURCE = "@key"
FOLDER_SOURCE = "@folder"
JOIN = "/"


class FieldMappingError(ValueError):
    """A --field that names no evalfleet field or no source."""


@dataclass(frozen=True)
class Reading:
    """How to read a benchmark: its format ("" = detected), field mapping, and the folder its
    relative image paths are under ("" = the layout's own: beside the file)."""

    format: str = ""
    fields: Mapping[str, str] = field(default_factory=dict)
    images: str = ""

    def record(self) -> dict[str, Any]:
        """What changes the pairs read from the same files: part of the run's identity."""
        return {k: v for k, v in (("format", self.format), ("fields", dict(sorted(self.fields.items()))),
                                  ("images", self.images)) if v}


def parse_field_mapping(specs: Iterable[str]) -> dict[str, str]:
    """``["category=task_type", ...]`` -> ``{"category": "task_type"}``; FieldMappingError names
    the bad one and what is accepted."""
    mapping: dict[str, str] = {}
    for spec in specs:
        name, sep, source = (part.strip() for part in spec.partition("="))
        if not sep or name not in NAMES or not source:
            raise FieldMappingError(
                f"--field {shown(spec)}: write NAME=SOURCE, NAME one of {', '.join(NAMES)}, SOURCE a field "
                f"of the benchmark's records (several joined with {JOIN!r}, or {KEY_SOURCE}, {FOLDER_SOURCE})")
        if name in mapping:
            raise FieldMappingError(f"--field {name} is given twice")
        mapping[name] = source
    return mapping


def mapped_record(raw: Mapping[str, Any], mapping: Mapping[str, str], implied: Mapping[str, str]) -> dict:
    """The record under evalfleet's names: each name's source looked up (absent when a source
    field is); the fields no mapping uses keep their own names too."""
    out: dict[str, Any] = {}
    for name in NAMES:
        source = mapping.get(name, name)
        value = _source_value(raw, source, implied)
        if value is not _ABSENT:
            out[name] = value
    return out


def own_fields(raw: Mapping[str, Any], mapping: Mapping[str, str]) -> dict[str, Any]:
    """The record's own fields as JSON values, but those holding image data (base64, bytes): what
    a pair keeps of its benchmark (GEdit's language, RISE's reference, ImgEdit's image path...)."""
    encoded = mapping.get("original_image_b64", "original_image_b64")
    return {str(k): _json_value(v) for k, v in raw.items() if k != encoded and not _is_image_value(v)}


_ABSENT = object()


def _source_value(raw: Mapping[str, Any], source: str, implied: Mapping[str, str]) -> Any:
    if source in implied:
        return implied[source]
    if source in raw or JOIN not in source:
        return raw.get(source, _ABSENT)
    parts = [raw.get(part, _ABSENT) for part in source.split(JOIN)]
    if any(p is _ABSENT or p is None for p in parts):
        return _ABSENT
    return JOIN.join(str(p) for p in parts)


def _is_image_value(value: Any) -> bool:
    """An image as a dataset file holds it: bytes, or a {"bytes", "path"} struct."""
    return isinstance(value, (bytes, bytearray)) or (isinstance(value, dict) and "bytes" in value)


def _json_value(value: Any) -> Any:
    """``value`` as JSON can hold it; what it cannot (a date of a parquet column) as text."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)  # JSON has no NaN
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    return str(value)
