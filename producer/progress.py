"""Waiting for a stage to finish (done + failed == total) with a progress bar.

The wait is never silent and never endless: a stage that stops moving while its queue
is empty and no worker holds a task of it (a message purged, lost with a Redis that kept
no file) will never finish, so its unfinished items are recorded as failed, with the
reason; tasks waiting in a queue that no worker takes are reported in the log.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import redis
from tqdm import tqdm

from config import Settings
from config.celery import celery_config
from producer.status import queue_depths
from shared.store import OUTAGE_ERRORS, Progress, RunStore, connect

log = logging.getLogger(__name__)

# How long the wait rides out Redis being unreachable (a restart, a failover) before it
# gives up. Everything is in Redis, so waiting loses nothing; giving up exits with 3.
REDIS_OUTAGE_SECONDS = 120.0


class StallWatch:
    """Tells a stage that is only slow from one that nothing will ever finish."""

    def __init__(self, broker: redis.Redis, queue: str, seconds: float, transport_options: dict):
        self.broker, self.queue, self.seconds = broker, queue, seconds
        self.transport_options = transport_options
        self.quiet_since = time.monotonic()
        self.last_seen: Progress | None = None
        self.warned_at = 0.0

    def stalled(self, progress: Progress) -> bool:
        """True once the stage has not moved for ``seconds`` with nothing queued or held."""
        now = time.monotonic()
        try:
            depth = queue_depths(self.broker, [self.queue], self.transport_options)[self.queue]
        except OUTAGE_ERRORS:
            depth = None  # the outage has its own limit
        moved = progress != self.last_seen
        self.last_seen = progress
        if moved or depth is None or depth["reserved"]:
            self.quiet_since = now
            return False
        if depth["waiting"]:
            self.quiet_since = now
            if now - self.warned_at > self.seconds:
                self.warned_at = now
                log.warning("%d task(s) wait in queue %r and no worker has taken one: is a worker "
                            "consuming it (python -m workers launch -Q %s)?", depth["waiting"],
                            self.queue, self.queue)
            return False
        return now - self.quiet_since > self.seconds


def stall_watch(settings: Settings, queue: str) -> StallWatch:
    """The watch over ``queue`` of the broker the settings name."""
    options = celery_config(settings)["broker_transport_options"]
    return StallWatch(connect(settings.broker), queue, settings.stall_seconds, options)


def wait_for_stage(store: RunStore, stage: str, poll_seconds: float,
                   check: Callable[[], None] = lambda: None, keys: list[str] | None = None,
                   label: str = "", outage_seconds: float = REDIS_OUTAGE_SECONDS,
                   stall: StallWatch | None = None) -> Progress:
    """Block until every item of the stage (or of ``keys``) is done or failed.

    ``check`` is called while waiting and raises to abort (e.g. the local workers died).
    Redis may be unreachable for up to ``outage_seconds`` at a time. With ``stall``, items
    that nothing will ever finish are failed instead of waited for.
    """
    poll = _OutageTolerantPoll(store, stage, keys, outage_seconds)
    progress = poll.progress()
    while progress is None:
        time.sleep(poll_seconds)
        progress = poll.progress()
    with tqdm(total=progress.total, desc=f"{store.run_id} {label or stage}", unit="item",
              initial=progress.done + progress.failed, dynamic_ncols=True) as bar:
        while not progress.finished:
            check()
            time.sleep(poll_seconds)
            progress = poll.progress() or progress
            if stall is not None and not progress.finished and stall.stalled(progress):
                fail_abandoned(store, stage, keys, stall)
                progress = poll.progress() or progress
            bar.update(progress.done + progress.failed - bar.n)
            bar.set_postfix(failed=progress.failed, refresh=False)
    return progress


def fail_abandoned(store: RunStore, stage: str, keys: list[str] | None, stall: StallWatch) -> None:
    """Record the items no task holds any more as failed, saying why."""
    left = store.unfinished(stage, keys)
    reason = (f"no task holds this item any more: the {stage} stage did not move for "
              f"{stall.seconds:.0f} s (EVALFLEET_STALL_SECONDS) while queue {stall.queue!r} was "
              f"empty and no worker held a task (a message purged or lost; see the worker log). "
              f"Run the same command again to retry it")
    log.error("%s: %d item(s) of stage %s will never finish: %s", store.run_id, len(left), stage, reason)
    for key in left:
        store.mark_failed(stage, key, reason, attempts=0)


class _OutageTolerantPoll:
    """``store.progress``; None while Redis is away, and the error once it has been away too long."""

    def __init__(self, store: RunStore, stage: str, keys: list[str] | None, outage_seconds: float):
        self.store, self.stage, self.keys = store, stage, keys
        self.outage_seconds = outage_seconds
        self.down_since: float | None = None

    def progress(self) -> Progress | None:
        try:
            progress = self.store.progress(self.stage, self.keys)
        except OUTAGE_ERRORS as exc:
            now = time.monotonic()
            if self.down_since is None:
                self.down_since = now
                log.warning("Redis unreachable (%s): waiting up to %.0f s for it", exc,
                            self.outage_seconds)
            if now - self.down_since > self.outage_seconds:
                raise
            return None
        if self.down_since is not None:
            log.info("Redis is back after %.1f s", time.monotonic() - self.down_since)
            self.down_since = None
        return progress
