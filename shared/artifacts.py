"""Files a run produces or needs, under ``<artifact root>/<run id>/``.

Originals are content-addressed (``originals/<sha256>.<ext>``): the same image is
stored once and its name proves its content. Edited images are named after their
item, so a person finds them: ``edited/<category>/<pair id>.png``.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

_UNSAFE = re.compile(r"[^\w.\-]+", re.UNICODE)


def safe_name(name: str) -> str:
    """A file name for an arbitrary string (Chinese kept); unsafe ones get a digest suffix."""
    cleaned = _UNSAFE.sub("_", name).strip("._")[:80]
    if cleaned == name:
        return name
    return f"{cleaned or 'item'}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def write_once(path: Path, data: bytes) -> str:
    """Write ``data`` at ``path`` unless a file is there already; the sha256 of the file that stays.

    A task executed twice (redelivered after a visibility timeout, or retried after it
    wrote its file and died) may make different bytes on a GPU. The first complete file
    wins (a hard link is created atomically or not at all) and every execution records
    the digest of that file, so the store never names a digest the file does not have.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        try:
            os.link(tmp, path)
        except FileExistsError:
            data = path.read_bytes()
    finally:
        os.unlink(tmp)
    return sha256_bytes(data)


class ArtifactStore:
    def __init__(self, root: Path, run_id: str):
        self.dir = Path(root).resolve() / run_id

    def put_original(self, data: bytes, extension: str) -> tuple[Path, str]:
        """Store an original image's bytes once; returns (path, sha256)."""
        digest = sha256_bytes(data)
        path = self.dir / "originals" / f"{digest}.{extension}"
        if not path.exists():
            write_atomic(path, data)
        return path, digest

    def edited_path(self, category: str, pair_id: str) -> Path:
        return self.dir / "edited" / safe_name(category) / f"{safe_name(pair_id)}.png"
