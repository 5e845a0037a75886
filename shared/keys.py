"""Idempotent keys: the same input and settings always give the same run and item keys."""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from pathlib import Path
from typing import Mapping

from shared import storage
from shared.files import open_regular

_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# Separates the parts of an item key (image_id|subject|object, category|pair_id).
KEY_SEP = "|"
# Longest id or name accepted in an item key: longer ones are data errors, and they would
# end up in every prompt, key and report line.
NAME_MAX = 256


def nfc(value: object) -> object:
    """A name in Unicode's composed form (NFC), anything else as it is: "café" typed as e plus a
    combining accent and "café" typed with "é" are one category, one class name."""
    return unicodedata.normalize("NFC", value) if isinstance(value, str) else value


def is_key_part(text: str) -> bool:
    """Usable as one part of an item key: not blank, at most NAME_MAX characters, no KEY_SEP."""
    return bool(text.strip()) and len(text) <= NAME_MAX and KEY_SEP not in text


def normalize_image_id(image_id: object) -> str:
    """Image ids may be integers on one side and strings on the other: compare as text."""
    if isinstance(image_id, bool) or not isinstance(image_id, (int, str)):
        raise TypeError(f"an image id must be an integer or a string, got {image_id!r}")
    text = str(image_id).strip()
    # "0042" and 42 name the same Visual Genome image. ASCII digits only: "²" and "٣"
    # are digits to str.isdigit(), and int() refuses the first.
    return str(int(text)) if text.isascii() and text.isdigit() else text


def relation_key(image_id: object, subject: str, object_: str) -> str:
    return KEY_SEP.join((normalize_image_id(image_id), subject, object_))


def separate_failure_keys(failures: dict[str, str], valid: set[str], sep: str) -> None:
    """Move every failure whose key is a valid item's key to ``<key><sep><n>``, unused by both.

    Registered under a valid item's key, a failure's placeholder would replace that item
    (the worker then finds no payload and raises).
    """
    for key in [k for k in failures if k in valid]:
        n = 2
        while f"{key}{sep}{n}" in failures or f"{key}{sep}{n}" in valid:
            n += 1
        failures[f"{key}{sep}{n}"] = failures.pop(key)


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open_regular(path) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def content_digest(path: Path) -> str:
    """The digest of a file's contents, or of every file under a directory (their paths
    relative to it, and contents): a LoRA given as either is part of a run's identity."""
    path = Path(path)
    if not path.is_dir():
        return file_digest(path)
    h = hashlib.sha256()
    # Every entry but folders: a FIFO among the files is refused (UnreadableFile), not skipped.
    for file in sorted(p for p in path.rglob("*") if not p.is_dir()):
        h.update(file.relative_to(path).as_posix().encode() + b"\0" + file_digest(file).encode())
    return h.hexdigest()


def location_digest(location: str | Path) -> str:
    """The sha256 of a file's or an object's content (an object is read whole, once: no store's
    ETag is used, see shared/storage.py)."""
    return storage.digest(location) if storage.is_url(location) else file_digest(Path(location))


def inputs_digest(inputs: list[Path], digests: list[str] | None = None) -> str:
    """One digest of the input files' contents, in order: part of a run's identity. ``digests``:
    the inputs' own digests where the caller has them already (objects are not read again)."""
    h = hashlib.sha256()
    for one in digests if digests is not None else [file_digest(path) for path in inputs]:
        h.update(one.encode())
    return h.hexdigest()[:16]


def derive_run_id(job: str, inputs: list[Path], settings: Mapping[str, object],
                  digests: list[str] | None = None) -> str:
    """``<job>-<12 hex>`` from the input files' contents (``digests``, as for inputs_digest) and
    the settings that change results."""
    h = hashlib.sha256(job.encode())
    for one in digests if digests is not None else [file_digest(path) for path in inputs]:
        h.update(one.encode())
    h.update(json.dumps(dict(settings), sort_keys=True, default=str).encode())
    return f"{job}-{h.hexdigest()[:12]}"


def check_run_name(name: str) -> str:
    if not _RUN_NAME.match(name):
        raise ValueError(
            f"run name {name!r}: use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name
