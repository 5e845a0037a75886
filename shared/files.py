"""Opening the files the project is given (inputs, images, templates, rubrics, LoRAs): regular
files only, checked the same way everywhere.

A FIFO would block the reader forever, a device (``/dev/zero``) never ends, a socket or a
directory cannot be read as a file: each is refused with a message naming the file. The
check is made on the opened descriptor (``fstat``), so a file swapped for a FIFO between a
check and the open cannot slip through; the open itself does not block (``O_NONBLOCK``).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

from shared.errors import InputFileError

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"))


class UnreadableFile(InputFileError):
    """A file cannot be read as a regular file; the message names it and says why.

    An InputFileError: where no caller turns it into a record's failure, the command stops
    with exit 2 naming the file.
    """

    def __init__(self, path: object, reason: str):
        super().__init__(path, reason)
        self.reason = reason


class MissingFile(UnreadableFile):
    """The file does not exist (some callers fall back to a default then)."""


def open_regular(path: str | Path) -> BinaryIO:
    """``path`` opened for reading in binary mode; raises UnreadableFile unless it is a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise MissingFile(path, "cannot read the file: it does not exist") from None
    except OSError as exc:
        # ENXIO: a socket; EISDIR, EACCES, ELOOP, ENAMETOOLONG...
        raise UnreadableFile(path, _special_kind(path) or f"cannot read the file ({exc.strerror})") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise UnreadableFile(path, f"cannot read the file: it is {_kind(mode)}, not a regular file")
        # A regular file never blocks; reads are ordinary blocking reads again.
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path: str | Path) -> bytes:
    """The contents of the regular file ``path``; raises UnreadableFile (MissingFile if absent)."""
    with open_regular(path) as f:
        try:
            return f.read()
        except OSError as exc:
            raise UnreadableFile(path, f"cannot read the file ({exc.strerror})") from None


def read_utf8(path: str | Path) -> str:
    """The text of the regular file ``path`` (UTF-8, a byte-order mark dropped); UnreadableFile otherwise."""
    return decode_utf8(read_bytes(path), path)


def decode_utf8(data: bytes, path: str | Path) -> str:
    """``data`` read from ``path`` (a file or an object) as UTF-8 text, a byte-order mark dropped."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UnreadableFile(path, f"not UTF-8 text (bad byte at offset {exc.start})") from None


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _special_kind(path: str | Path) -> str:
    """What a special file that could not be opened (a socket) is, as a reason; "" for others."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return ""
    return "" if stat.S_ISREG(mode) else f"cannot read the file: it is {_kind(mode)}, not a regular file"
