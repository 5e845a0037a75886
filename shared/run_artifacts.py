"""Files a run produces or needs, under ``<artifact root>/<run id>/``.

The artifact root is a local folder or an object-store URL (``s3://bucket/prefix``,
``shared/storage.py``); either way a file is named by its location, a string the run's items
carry (messages carry these names, never the bytes).

Originals are content-addressed (``originals/<sha256>.<ext>``): the same image is
stored once and its name proves its content. Edited images are named after their
item, so a person finds them, and carry the digest of the exact id, so two items never
share a file: ``edited/<category>-<digest>/<pair id>-<digest>.png`` (see safe_name).
"""

from __future__ import annotations

from pathlib import Path

from shared import storage
from shared.artifacts import safe_name, sha256_bytes, write_atomic


class ArtifactStore:
    def __init__(self, root: str | Path, run_id: str):
        self.dir = storage.join(root, run_id)

    def put_original(self, data: bytes, extension: str) -> tuple[str, str]:
        """Store an original image's bytes once; returns (location, sha256)."""
        digest = sha256_bytes(data)
        location = storage.join(self.dir, "originals", f"{digest}.{extension}")
        if storage.is_url(location):
            storage.write_once(location, data)  # an object there already has these bytes: its name says so
        elif not Path(location).exists():
            write_atomic(Path(location), data)
        return location, digest

    def edited_path(self, category: str, pair_id: str) -> str:
        return storage.join(self.dir, "edited", safe_name(category), f"{safe_name(pair_id)}.png")
