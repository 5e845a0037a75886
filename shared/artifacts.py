"""Writing local files safely (atomically, or once) and naming files after arbitrary ids.

Where a run's files go under its artifact root: ``shared/run_artifacts.py``.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

from shared.disk import writing_in

_UNSAFE = re.compile(r"[^\w.\-]+", re.UNICODE)
# Bytes of the readable part of a file name made from an id; with the digest and an
# extension the name stays far below the 255 bytes file systems allow, temporary
# file prefixes included.
READABLE_NAME_BYTES = 100

# The process's umask, read once: mkstemp makes files 0600, which other users and hosts
# of a shared filesystem cannot read; the files get the mode an open() would give them.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def safe_name(name: str) -> str:
    """A file name for an arbitrary id: readable (Chinese kept), bounded, and injective.

    The digest of the exact id is always appended, so two ids never share a name (one
    id's cleaned form cannot equal another id, as it could when only unsafe ids got a
    digest), and the name has at most READABLE_NAME_BYTES + 17 bytes whatever the id.
    """
    cleaned = _UNSAFE.sub("_", name).strip("._")
    cleaned = cleaned.encode("utf-8")[:READABLE_NAME_BYTES].decode("utf-8", "ignore") or "item"
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{cleaned}-{digest}"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def temp_file_beside(path: Path, suffix: str = "") -> tuple[int, str]:
    """``mkstemp`` in ``path``'s folder (created if needed), with the umask's mode, not 0600."""
    with writing_in(path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.fchmod(fd, 0o666 & ~_UMASK)
    return fd, tmp


def write_atomic(path: Path, data: bytes) -> None:
    """Readers see the old file or the whole new one; a write that fails (a full disk: DiskFull
    naming the folder) leaves neither a partial file nor its temporary one behind."""
    write_atomic_with(path, lambda f: f.write(data))


def write_atomic_with(path: Path, write: Callable[[BinaryIO], object], durable: bool = False) -> None:
    """``write_atomic`` for content written by ``write(file)`` as it is made (a large report is
    never held twice in memory); ``durable`` syncs it to the disk before it replaces the old one."""
    fd, tmp = temp_file_beside(path)
    try:
        with writing_in(path.parent), os.fdopen(fd, "wb") as f:
            write(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_once(path: Path, data: bytes) -> str:
    """Write ``data`` at ``path`` unless a file is there already; the sha256 of the file that stays.

    A task executed twice (redelivered after a visibility timeout, or retried after it
    wrote its file and died) may make different bytes on a GPU. The first complete file
    wins (a hard link is created atomically or not at all) and every execution records
    the digest of that file, so the store never names a digest the file does not have.
    """
    fd, tmp = temp_file_beside(path)
    try:
        with writing_in(path.parent), os.fdopen(fd, "wb") as f:
            f.write(data)
        try:
            os.link(tmp, path)
        except FileExistsError:
            data = path.read_bytes()
    finally:
        os.unlink(tmp)
    return sha256_bytes(data)
