"""Child processes that die with their parent (Linux's PR_SET_PDEATHSIG)."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import signal
import sys
from typing import Callable

PR_SET_PDEATHSIG = 1


@functools.cache
def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def die_with_parent_hook(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get ``sig`` when its parent dies (Linux; else None)."""
    libc = _libc()  # loaded here, in the parent: the child only calls prctl
    if libc is None:
        return None
    return lambda: libc.prctl(PR_SET_PDEATHSIG, sig)
