"""Opening input images with errors that say what is wrong with the file, and confining paths."""

from __future__ import annotations

import io
import logging
import os
import warnings
from pathlib import Path
from typing import IO

from billiard.exceptions import SoftTimeLimitExceeded  # celery's, raised inside a running task
import numpy as np
from PIL import Image, ImageCms, UnidentifiedImageError

from shared import storage
from shared.errors import InputFileError, RecordError, shown
from shared.files import UnreadableFile, open_regular

log = logging.getLogger(__name__)

# Longest image path accepted in an input record.
PATH_MAX = 4096


class ImageFileError(ValueError):
    """An image file is missing, unreadable, truncated or too large."""


class UnshowableImage(ValueError):
    """An image's pixels have no agreed appearance (floats outside 0-1, 32-bit integers)."""


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


# Pillow's modes of 16-bit pixels (and "I", which some of its readers give 16-bit files).
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
# Transparent pixels are shown over white, as an image viewer or a web page shows them.
BACKGROUND = (255, 255, 255, 255)


def as_displayed(img: Image.Image) -> Image.Image:
    """``img`` as an RGB image of what a viewer shows, whatever its mode.

    ``convert("RGB")`` alone clips 16-bit pixels to 255 (a 16-bit image becomes pure white),
    drops transparency (hidden colours show) and converts LAB as if it were YCbCr. Here:
    16-bit pixels are scaled to 8 bits, floating-point ones in 0-1 too; colour profiles
    (CMYK, Adobe RGB) and LAB are converted to sRGB; transparency (an alpha channel, a palette's
    or a single transparent colour) is composited over white. Raises UnshowableImage, saying why,
    for pixels no viewer agrees on (floats outside 0-1, 32-bit integers beyond 16 bits).
    """
    if img.mode in SIXTEEN_BIT_MODES or img.mode == "F":
        img = _eight_bit(img)
    img = _srgb(img)
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        try:
            rgba = img.convert("RGBA")
        except ValueError as exc:
            raise UnshowableImage(f"mode {img.mode} cannot be shown ({exc})") from None
        return Image.alpha_composite(Image.new("RGBA", img.size, BACKGROUND), rgba).convert("RGB")
    try:
        return img.convert("RGB")
    except ValueError as exc:
        raise UnshowableImage(f"mode {img.mode} cannot be shown ({exc})") from None


def _eight_bit(img: Image.Image) -> Image.Image:
    """A 16-bit or floating-point grey image as 8-bit grey ("L"), scaled as a viewer scales it."""
    pixels = np.asarray(img).astype(np.float64)
    low, high = (float(pixels.min()), float(pixels.max())) if pixels.size else (0.0, 0.0)
    if img.mode == "F":
        if not (0.0 <= low and high <= 1.0):  # NaN fails both comparisons
            raise UnshowableImage(f"floating-point pixels from {low} to {high}: only 0-1 has an agreed "
                             "brightness; save the image with 8 or 16 bits per channel")
        scale = 255.0
    else:
        if low < 0 or high > 65535:
            raise UnshowableImage(f"32-bit integer pixels from {low:.0f} to {high:.0f}: only 0-65535 "
                             "(16 bits) has an agreed brightness; save the image with 8 or 16 bits")
        scale = 255.0 / 65535.0
    return Image.fromarray(np.rint(pixels * scale).astype(np.uint8), mode="L")


def _srgb(img: Image.Image) -> Image.Image:
    """``img`` converted to sRGB when it carries a colour profile, or is LAB; as it is otherwise."""
    icc = img.info.get("icc_profile")
    if img.mode == "LAB":
        source, icc = ImageCms.createProfile("LAB"), None
    elif icc and img.mode in ("RGB", "RGBA", "CMYK", "L", "LA"):
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        except (OSError, ImageCms.PyCMSError) as exc:
            log.warning("colour profile not readable (%s): the pixels are used as sRGB", exc)
            return img
    else:
        return img
    output = "RGBA" if "A" in img.mode else "RGB"
    try:
        return ImageCms.profileToProfile(img, source, ImageCms.createProfile("sRGB"), outputMode=output)
    except ImageCms.PyCMSError as exc:
        if img.mode == "LAB":
            raise UnshowableImage(f"LAB pixels cannot be converted to sRGB ({exc})") from None
        log.warning("colour profile not applicable (%s): the pixels are used as sRGB", exc)
        return img


def open_image(path: str | Path) -> Image.Image:
    """Decode an image fully as the RGB a viewer shows (see as_displayed), refusing decompression
    bombs (see load_fully) and files that are not regular files (see shared/files.py)."""
    try:
        f = open_regular(path)
    except UnreadableFile as exc:
        raise ImageFileError(f"image file {exc}") from None
    with f:
        return _decoded(f, path)


def image_from_bytes(data: bytes, name: str) -> Image.Image:
    """``open_image`` for an image's bytes (an object fetched from a store); ``name`` (its URL)
    is the one its errors give."""
    return _decoded(io.BytesIO(data), name)


def _decoded(source: IO[bytes], name: str | Path) -> Image.Image:
    try:
        with load_fully(source) as img:
            return as_displayed(img)
    except UnreadableFile as exc:
        raise ImageFileError(f"image file {exc}") from None
    except UnshowableImage as exc:
        raise ImageFileError(f"image file {name} cannot be shown: {exc}") from None
    except Image.DecompressionBombError as exc:
        raise ImageFileError(f"image file {name} is too large to decode safely: {exc}") from None
    except UnidentifiedImageError:
        raise ImageFileError(f"image file {name} is not an image Pillow can read") from None
    except MemoryError:
        raise ImageFileError(f"image file {name} does not fit in memory") from None
    except SoftTimeLimitExceeded:
        raise  # the task's time limit, not the file: the task's own handling reports it
    except Exception as exc:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, ValueError...
        raise ImageFileError(f"image file {name} cannot be decoded ({exc})") from None


def resolve_inside(path: str | Path, root: str | Path) -> str:
    """``path`` with every symbolic link and ``..`` resolved; refused if that leaves ``root``."""
    real, real_root = os.path.realpath(path), os.path.realpath(root)
    if os.path.commonpath([real, real_root]) != real_root:
        raise PathOutsideRoot(
            f"{path} resolves to {real}, outside the data root {real_root} (EVALFLEET_DATA_ROOT)"
        )
    return real


def checked_input_path(value: object, path: str | Path, record: str, field: str, root: str | Path) -> str:
    """An input record's image path: relative ones are relative to the input file ``path``
    (a file's folder, or an object's: ``images/1.png`` in ``s3://b/in.json`` is
    ``s3://b/images/1.png``), wherever the command runs; with a data root, it must resolve
    inside it. A URL (``s3://``, ``https://``: anything shared/storage.py reads) is kept as it
    is: the data root confines local files only, and the store's own credentials decide what a
    URL may read.

    Raises RecordError naming the file, the record and the field.
    """
    if not isinstance(value, str) or not value.strip():
        raise RecordError(path, record, field, f"expected a non-empty string, got {shown(value)}")
    if len(value) > PATH_MAX or "\0" in value:
        raise RecordError(path, record, field,
                          f"expected a path of at most {PATH_MAX} characters without NUL, got {shown(value)}")
    located = storage.resolve_under(storage.parent(path), value)
    if storage.is_url(located):
        return located
    resolved = Path(located)
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
