"""Opening an image a task needs, wherever it is: a local file, or an object by URL."""

from __future__ import annotations

from PIL import Image

from shared import storage
from shared.images import ImageFileError, image_from_bytes, open_image
from workers.runtime import object_cache


def open_location(location: str, sha256: str | None = None) -> Image.Image:
    """A local file through open_image's checks; an object through ``read_location``."""
    if not storage.is_url(location):
        return open_image(location)
    return image_from_bytes(read_location(location, sha256), location)


def read_location(location: str, sha256: str | None = None) -> bytes:
    """The bytes of a local file, or of an object through this host's cache (with ``sha256``,
    the content the run registered: other content is refused, see ObjectCache.read), so a task
    that reads an image twice fetches it once. An object that cannot be read fails its pair
    (ImageFileError naming the URL and the store's answer); a store that does not answer
    (StoreUnreachable) retries the task."""
    try:
        return object_cache().read(location, sha256)
    except storage.StoreUnreachable:
        raise
    except storage.StorageError as exc:
        raise ImageFileError(f"image {exc}") from None
