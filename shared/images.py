"""Opening input images with errors that say what is wrong with the file, and confining paths."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import IO

from billiard.exceptions import SoftTimeLimitExceeded  # celery's, raised inside a running task
from PIL import Image, UnidentifiedImageError

from shared.errors import InputFileError, RecordError, shown
from shared.files import UnreadableFile, open_regular

# Longest image path accepted in an input record.
PATH_MAX = 4096


class ImageFileError(ValueError):
    """An image file is missing, unreadable, truncated or too large."""


class PathOutsideRoot(ValueError):
    """A path resolves (symbolic links followed) to a place outside the data root."""


def load_fully(source: str | Path | IO[bytes]) -> Image.Image:
    """Open and decode an image completely, so truncation shows up here, not later.

    Images above Pillow's decompression-bomb threshold (about 89 million pixels) raise
    DecompressionBombError, not just a warning: a few kilobytes of PNG can claim
    gigabytes of pixels.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(source)
        except Image.DecompressionBombWarning as exc:
            raise Image.DecompressionBombError(str(exc)) from None
    try:
        img.load()
    except BaseException:
        img.close()
        raise
    return img


def open_image(path: str | Path) -> Image.Image:
    """Decode an image fully as RGB, refusing decompression bombs (see load_fully) and files
    that are not regular files (see shared/files.py)."""
    try:
        with open_regular(path) as f, load_fully(f) as img:
            return img.convert("RGB")
    except UnreadableFile as exc:
        raise ImageFileError(f"image file {exc}") from None
    except Image.DecompressionBombError as exc:
        raise ImageFileError(f"image file {path} is too large to decode safely: {exc}") from None
    except UnidentifiedImageError:
        raise ImageFileError(f"image file {path} is not an image Pillow can read") from None
    except MemoryError:
        raise ImageFileError(f"image file {path} does not fit in memory") from None
    except SoftTimeLimitExceeded:
        raise  # the task's time limit, not the file: the task's own handling reports it
    except Exception as exc:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, ValueError...
        raise ImageFileError(f"image file {path} cannot be decoded ({exc})") from None


def resolve_inside(path: str | Path, root: str | Path) -> str:
    """``path`` with every symbolic link and ``..`` resolved; refused if that leaves ``root``."""
    real, real_root = os.path.realpath(path), os.path.realpath(root)
    if os.path.commonpath([real, real_root]) != real_root:
        raise PathOutsideRoot(
            f"{path} resolves to {real}, outside the data root {real_root} (EVALFLEET_DATA_ROOT)"
        )
    return real


def checked_input_path(value: object, path: Path, record: str, field: str, root: str | Path) -> str:
    """An input record's image path: relative ones are relative to the input file ``path``,
    wherever the command runs; with a data root, it must resolve inside it.

    Raises RecordError naming the file, the record and the field.
    """
    if not isinstance(value, str) or not value.strip():
        raise RecordError(path, record, field, f"expected a non-empty string, got {shown(value)}")
    if len(value) > PATH_MAX or "\0" in value:
        raise RecordError(path, record, field,
                          f"expected a path of at most {PATH_MAX} characters without NUL, got {shown(value)}")
    resolved = Path(value)
    if not resolved.is_absolute():
        resolved = Path(path).resolve().parent / resolved
    if not root:
        return str(resolved)
    try:
        return resolve_inside(resolved, root)
    except PathOutsideRoot as exc:
        raise RecordError(path, record, field, f"refused: {exc}") from None


def checked_data_root(data_root: str | Path) -> str:
    """The data root (EVALFLEET_DATA_ROOT) resolved, or "" when none is set."""
    if not data_root:
        return ""
    if not os.path.isdir(data_root):
        raise InputFileError(data_root, "the data root (EVALFLEET_DATA_ROOT) is not a directory")
    return os.path.realpath(data_root)
