"""Riding out a short Redis outage (a restart, a failover) inside a task.

redis-py retries a command for about a second; a restarted Redis takes longer. A
task whose store write failed would otherwise end in an exception: Celery acknowledges
it (late acks ack failures too), the broker forgets the message, and its items are
neither done nor failed, so the producer waits for them forever. Instead the task
waits for Redis (bounded) and runs again: finished items are skipped (the done
records are idempotent), the others are redone.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, TypeVar

import redis

from shared.store import OUTAGE_ERRORS

log = logging.getLogger(__name__)

T = TypeVar("T")

# How long a task waits for its store to come back before it gives up (and raises).
STORE_OUTAGE_SECONDS = 60.0


def surviving_store_outages(client: redis.Redis, run: Callable[[], T],
                            limit: float = STORE_OUTAGE_SECONDS) -> T:
    """``run()``; if Redis goes away meanwhile, wait for it (up to ``limit`` s) and run again."""
    deadline = time.monotonic() + limit
    while True:
        try:
            return run()
        except OUTAGE_ERRORS as exc:
            if time.monotonic() >= deadline:
                raise
            log.warning("Redis unreachable (%s): waiting for it, then running the task again", exc)
            _wait_for_redis(client, deadline)


def _wait_for_redis(client: redis.Redis, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            client.ping()
            return
        except OUTAGE_ERRORS:
            time.sleep(0.5)
