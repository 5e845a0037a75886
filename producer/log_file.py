"""The producer's log file, which a full disk silences instead of flooding the terminal.

logging's own handler prints "--- Logging error ---" and a traceback on the terminal for
every line it cannot write: dozens of them when the disk is full, hiding the one line that
says so. This one says once that the file cannot be written, and why, and leaves the rest
to the terminal's handler.
"""

from __future__ import annotations

import logging
import sys

from shared.disk import is_disk_full, no_space_left


class LogFile(logging.FileHandler):
    def __init__(self, path) -> None:
        super().__init__(path, encoding="utf-8")
        self.broken = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.broken:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        exc = sys.exc_info()[1]
        if not isinstance(exc, OSError):
            super().handleError(record)  # a bad format string: a bug to show
            return
        self.broken = True
        why = f"{no_space_left(self.baseFilename)}: {exc.strerror}" if is_disk_full(exc) else exc
        try:
            sys.stderr.write(f"cannot write the log {self.baseFilename} ({why}); "
                             f"logging to the terminal only\n")
        except OSError:
            pass
