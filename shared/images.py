"""Opening input images with errors that say what is wrong with the file, and confining paths."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import IO

from PIL import Image, UnidentifiedImageError


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
    """Decode an image fully as RGB, refusing decompression bombs (see load_fully)."""
    if Path(path).is_dir():
        raise ImageFileError(f"image file {path} is a directory, not an image")
    if Path(path).exists() and not Path(path).is_file():
        # A FIFO or a device would block open() or never end.
        raise ImageFileError(f"image file {path} is not a regular file (a FIFO, socket or device)")
    try:
        with load_fully(path) as img:
            return img.convert("RGB")
    except FileNotFoundError:
        raise ImageFileError(f"image file {path} does not exist") from None
    except Image.DecompressionBombError as exc:
        raise ImageFileError(f"image file {path} is too large to decode safely: {exc}") from None
    except UnidentifiedImageError:
        raise ImageFileError(f"image file {path} is not an image Pillow can read") from None
    except MemoryError:
        raise ImageFileError(f"image file {path} does not fit in memory") from None
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
