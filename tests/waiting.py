"""Waiting for a state, never for a time: what the tests and the benchmarks that start servers use."""

from __future__ import annotations

import time


def wait_until(condition, timeout: float, what: str, interval: float = 0.05):
    """Call ``condition`` until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout}s")
        time.sleep(interval)
    return result
