"""A bounded local copy of the objects a worker fetched from an object store.

An original many pairs share (and each edit, read by the score task after its edit task on
the same host) is fetched once per host: every worker process of the host uses the same
folder. A run's artifacts never change under their name (originals are named by their sha256,
edits are written once); an input object may, so its copy is kept under its URL and the digest
the producer registered, and a fetch of other content is refused: a copy is never stale.

A copy is a file named by the sha256 of its URL, written atomically; a hit refreshes its
modification time, and after each new copy the least recently used ones go until the folder
holds at most its size. A copy removed by another process between two reads is fetched again.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from shared import storage
from shared.artifacts import sha256_bytes, write_atomic
from shared.files import UnreadableFile
from shared.files import read_bytes as read_file

log = logging.getLogger(__name__)


class ObjectChanged(storage.StorageError):
    """An object's content is not what the run registered under its URL."""


def _checked(location: str, data: bytes, sha256: str | None) -> bytes:
    if sha256 is not None and storage.is_url(location) and (now := sha256_bytes(data)) != sha256:
        raise ObjectChanged(location, "changed since the run was registered",
                            f"sha256 {now[:12]}, registered {sha256[:12]}; register a new run for it")
    return data


class ObjectCache:
    def __init__(self, directory: Path, max_bytes: int):
        self.directory = Path(directory)
        self.max_bytes = max_bytes

    def read(self, location: str, sha256: str | None = None) -> bytes:
        """The content at ``location``: a local path read as it is, an object from the cache
        if it holds it, else fetched (StorageError naming the URL) and kept.

        ``sha256``: the content the run registered (an input object, which may change under
        its URL): the copy is kept under it too, and fetched bytes of another digest raise
        ObjectChanged rather than mixing two versions of the object in one run."""
        if not storage.is_url(location) or self.max_bytes <= 0:
            return _checked(location, storage.read_bytes(location), sha256)
        copy = self.directory / hashlib.sha256(f"{location}\0{sha256 or ''}".encode()).hexdigest()
        try:
            data = read_file(copy)
            os.utime(copy)
            return data
        except (UnreadableFile, FileNotFoundError):
            pass  # not here (or removed just now): fetched below
        data = _checked(location, storage.read_bytes(location), sha256)
        self._keep(copy, data)
        return data

    def _keep(self, copy: Path, data: bytes) -> None:
        if len(data) > self.max_bytes:
            return
        try:
            write_atomic(copy, data)
            self._trim()
        except OSError as exc:  # a full or read-only disk costs the cache, not the task
            log.warning("object cache %s: cannot keep a copy (%s)", self.directory, exc)

    def _trim(self) -> None:
        """Remove the least recently used copies until the folder holds at most max_bytes."""
        copies = []
        for entry in os.scandir(self.directory):
            try:
                if entry.is_file() and not entry.name.startswith("."):  # "." : a copy being written
                    info = entry.stat()
                    copies.append((info.st_mtime, info.st_size, entry.path))
            except FileNotFoundError:
                continue  # removed by another process meanwhile
        total = sum(size for _, size, _ in copies)
        for _, size, path in sorted(copies):
            if total <= self.max_bytes:
                break
            Path(path).unlink(missing_ok=True)
            total -= size
