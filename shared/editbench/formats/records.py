"""Records to categories: a benchmark's records, each under evalfleet's names, grouped by
category in order of first appearance; a record without a usable category fails alone."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from shared.editbench.formats.fields import mapped_record, own_fields
from shared.errors import RecordError, shown
from shared.keys import KEY_SEP, NAME_MAX, nfc


@dataclass
class Group:
    """One category as found in the benchmark, before its pairs are checked."""

    name: object
    pairs: object
    where: str  # how a message names the category's place in the file
    labels: list[str] = field(default_factory=list)  # each pair's record name, when pairs is a list
    problem: str = ""  # set when the entry is not a category at all: it fails under ``key``
    key: str = ""
    file: str | Path | None = None  # the file (or object) messages name (default: the benchmark's)
    base: str | Path | None = None  # relative image paths are under it (default: the file's folder)
    fields: list[dict] = field(default_factory=list)  # each pair's own fields, when read by a layout
    sources: dict[str, str] = field(default_factory=dict)  # evalfleet's name -> the benchmark's field


@dataclass
class Record:
    """One record as a layout found it: ``raw`` its own fields (or a reason it is unusable)."""

    label: str  # how messages name it: "line 3", "row 12", "key '1082'"
    raw: Any
    implied: dict[str, str] = field(default_factory=dict)  # "@key", "@folder"
    problem: str = ""  # the record could not be read at all (not valid JSON)


def category_problem(category: object) -> str | None:
    """Why ``category`` cannot name a category, or None."""
    if not isinstance(category, str):
        return f"the category name must be a string, got {shown(category)}"
    if not category.strip():
        return "the category name is empty"
    if len(category) > NAME_MAX:
        return f"the category name is longer than {NAME_MAX} characters"
    if KEY_SEP in category:
        # Item keys are category|pair_id: "a|b" + "c" and "a" + "b|c" would be one key.
        return f"the category name contains {KEY_SEP!r}, which item keys use as a separator; rename it"
    return None


def grouped(records: Iterable[Record], mapping: dict[str, str], file: str | Path, base: str | Path,
            groups: dict[str, Group] | None = None) -> tuple[list[Group], list[tuple[str, str]]]:
    """The records' categories (added to ``groups`` when given) and the failures (key, reason)
    of records that name no usable category."""
    groups = {} if groups is None else groups
    failures = []
    for record in records:
        key = f"?{record.label.replace(KEY_SEP, '/')}{KEY_SEP}*"
        if record.problem:
            failures.append((key, f"{file}: {record.label}: {record.problem}"))
            continue
        if not isinstance(record.raw, dict):
            failures.append((key, str(RecordError(file, record.label, "record",
                                                  f"expected an object, got {shown(record.raw)}"))))
            continue
        pair = mapped_record(record.raw, mapping, record.implied)
        category = nfc(pair.get("category"))
        problem = category_problem(category)
        if problem:
            source = mapping.get("category", "category")
            failures.append((key, str(RecordError(file, record.label, source, problem))))
            continue
        group = groups.setdefault(category, Group(category, [], f"category {shown(category)}", file=file,
                                                  base=base, sources=dict(mapping)))
        group.pairs.append(pair)
        group.labels.append(f"{record.label} (category {shown(category)})")
        group.fields.append(own_fields(record.raw, mapping))
    return list(groups.values()), failures
