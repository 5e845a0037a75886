"""SIGINT and SIGTERM: the first stops the run in order, a second one stops it at once.

The first signal raises ``Interrupted`` where the producer is, and the ``with`` blocks it leaves
stop what they started, innermost first: the local workers (a warm shutdown: running tasks
finish and store their results, while Redis is still there), then the embedded Redis (which
flushes its file). A second signal, while that goes on, runs the registered "stop now" actions
(the workers are killed; their unacknowledged messages are sent again by the rerun). Ctrl-C in a
terminal reaches only the producer: the children it stops in order run in sessions of their own
(``producer/embedded.py``).
"""

from __future__ import annotations

import contextlib
import logging
import signal
from typing import Callable, Iterator

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """A signal asked the producer to stop (a BaseException, like KeyboardInterrupt: no
    ``except Exception`` swallows it)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """The shell's code for a process ended by the signal: 130 for SIGINT, 143 for SIGTERM."""
        return 128 + self.signum


_first: int | None = None
_stop_now: list[Callable[[], None]] = []


def _handle(signum: int, _frame) -> None:
    global _first
    if _first is None:
        _first = signum
        raise Interrupted(signum)
    log.warning("%s again: stopping at once", signal.Signals(signum).name)
    for action in list(_stop_now):
        action()


def install() -> None:
    """Handle SIGINT and SIGTERM as the module's doc says. A SIGINT ignored by whoever started us
    (a shell's background job) stays ignored."""
    for signum in SIGNALS:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, _handle)


@contextlib.contextmanager
def stop_now_action(action: Callable[[], None]) -> Iterator[None]:
    """Run ``action`` on a second signal while inside this block."""
    _stop_now.append(action)
    try:
        yield
    finally:
        _stop_now.remove(action)
