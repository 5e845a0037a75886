"""Opening input images with errors that say what is wrong with the file."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError


class ImageFileError(ValueError):
    """An image file is missing, unreadable, truncated or too large."""


def open_image(path: str | Path) -> Image.Image:
    """Decode an image fully (so truncation shows up here, not later) as RGB."""
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except FileNotFoundError:
        raise ImageFileError(f"image file {path} does not exist") from None
    except Image.DecompressionBombError as exc:
        raise ImageFileError(f"image file {path} is too large to decode safely: {exc}") from None
    except UnidentifiedImageError:
        raise ImageFileError(f"image file {path} is not an image Pillow can read") from None
    except OSError as exc:
        raise ImageFileError(f"image file {path} cannot be decoded ({exc})") from None
