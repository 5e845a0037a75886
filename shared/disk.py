"""A disk with no space left: one error, one sentence, wherever a write finds none.

A write fails for lack of space with ENOSPC (the disk is full), EDQUOT (the user's quota)
or EFBIG (past a file-size limit, ``ulimit -f``: Python ignores SIGXFSZ, so the write fails
instead of killing the process). The OSError then names no file: ``writing_in`` turns it
into a ``DiskFull`` that names the folder written to, so the user knows which disk to free.
"""

from __future__ import annotations

import contextlib
import errno
import shutil
from pathlib import Path
from typing import Iterator

NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def no_space_left(where: object) -> str:
    """The sentence every full-disk failure starts with."""
    return f"no space left on {where}"


class DiskFull(OSError):
    """A write found no space left on ``where`` (a folder, or a server's disk)."""

    def __init__(self, where: object, detail: str = ""):
        self.where = str(where)
        self.detail = detail
        super().__init__(errno.ENOSPC, str(self))

    def __str__(self) -> str:
        detail = f" ({self.detail})" if self.detail else ""
        return f"{no_space_left(self.where)}{detail}: free space there and run the same command again"


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS


def as_disk_full(exc: OSError, where: object) -> DiskFull:
    """``exc`` (a no-space OSError) as a DiskFull naming ``where``, or its own file if it has one."""
    if isinstance(exc, DiskFull):
        return exc
    return DiskFull(exc.filename or where, exc.strerror or "")


@contextlib.contextmanager
def writing_in(where: object) -> Iterator[None]:
    """A no-space OSError raised inside becomes a DiskFull naming ``where``; others pass."""
    try:
        yield
    except OSError as exc:
        if is_disk_full(exc):
            raise as_disk_full(exc, where) from exc
        raise


def check_free_space(directory: Path, minimum_mb: float, setting: str) -> None:
    """Raise DiskFull when ``directory``'s disk has less than ``minimum_mb`` free: a run started
    there would fail its writes (results, logs, images) part-way."""
    if minimum_mb <= 0:
        return
    directory = Path(directory).resolve()
    free_mb = shutil.disk_usage(directory).free / 2**20
    if free_mb < minimum_mb:
        raise DiskFull(directory, f"{setting}: {free_mb:.0f} MB free, below EVALFLEET_MIN_FREE_MB="
                                  f"{minimum_mb:g}")
