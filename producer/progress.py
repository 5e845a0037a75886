"""Waiting for a stage to finish (done + failed == total) with a progress bar.

The wait is never silent and never endless. A stage that has not moved for
``EVALFLEET_STALL_SECONDS`` while its queue is empty and no worker holds a task of it
(a message purged, lost with a Redis that kept no file, or stranded as unacknowledged
after a Redis restart until the visibility timeout) will not finish by itself: its
unfinished items are sent again, one task each (the results are idempotent), and if the
stage stalls again they are recorded as failed, with the reason. Tasks waiting in a
queue while no live worker holds a task of it are reported in the log; a worker busy
with a long task is not a stall, however long the task.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import redis
from celery import Celery
from tqdm import tqdm

from config import Settings
from producer.kombu_redis import queue_depths, unacked_messages
from producer.rate import RATE_WINDOW_SECONDS, duration, per_minute, rate_and_eta
from producer.stale_messages import held_task_ids, take_out_stale_messages
from shared.store import OUTAGE_ERRORS, Progress, RunStore, connect

log = logging.getLogger(__name__)

# How long the wait rides out Redis being unreachable (a restart, a failover) before it
# gives up. Everything is in Redis, so waiting loses nothing; giving up exits with 3.
REDIS_OUTAGE_SECONDS = 120.0


class StallWatch:
    """Tells a stage that is only slow from one that nothing will ever finish."""

    def __init__(self, app: Celery, broker: redis.Redis, queue: str, task: str, seconds: float,
                 clock: Callable[[], float] = time.monotonic):
        self.app, self.broker, self.queue, self.task = app, broker, queue, task
        self.seconds = seconds
        self.transport_options = dict(app.conf.broker_transport_options or {})
        self.clock = clock
        self.quiet_since = clock()
        self.last_seen: Progress | None = None
        self.stalls = 0

    def stalled(self, progress: Progress) -> bool:
        """True once the stage has sat still for ``seconds`` with nothing queued or held."""
        now = self.clock()
        if progress != self.last_seen:
            self.last_seen, self.quiet_since = progress, now
            return False
        if now - self.quiet_since <= self.seconds:
            return False
        self.quiet_since = now  # check again one period later, whatever is found now
        try:
            depth = queue_depths(self.broker, [self.queue], self.transport_options)[self.queue]
            out = self._unacked_task_ids()
            held = held_task_ids(self.app) if out else set()
            if depth["waiting"]:
                if not out & held:  # a live worker busy with a task of the queue will take the next
                    log.warning("%d task(s) wait in queue %r, nothing moved for %.0f s and no live "
                                "worker holds a task of it: is a worker consuming it (python -m "
                                "workers launch -Q %s)?", depth["waiting"], self.queue, self.seconds,
                                self.queue)
                return False
            return not out or not out <= held
        except OUTAGE_ERRORS:
            return False  # the outage has its own limit

    def _unacked_task_ids(self) -> set[str]:
        """Ids of this queue's tasks delivered to a worker and not acknowledged."""
        return {message.get("headers", {}).get("id") for message, queue in unacked_messages(self.broker)
                if queue == self.queue}

    def recover(self, store: RunStore, stage: str, keys: list[str] | None) -> None:
        """First stall: send the unfinished items again; the next one: fail them, saying why."""
        self.stalls += 1
        left = store.unfinished(stage, keys)
        why = (f"the {stage} stage did not move for {self.seconds:.0f} s (EVALFLEET_STALL_SECONDS) "
               f"while queue {self.queue!r} was empty and no worker held a task of it")
        if self.stalls == 1:
            # A message stranded as unacknowledged would come back after the visibility timeout
            # and outlive the run: taken out first.
            in_flight, rest = take_out_stale_messages(self.app, self.broker, self.queue,
                                                      store.run_id).split(left)
            log.warning("%s: %s; sending its %d unfinished item(s) again", store.run_id, why, len(left))
            for key in in_flight + rest:
                self.app.send_task(self.task, args=[store.run_id, [key]], queue=self.queue)
            return
        reason = (f"no task holds this item any more: {why}, even after it was sent again "
                  f"(a message purged or lost; see the worker log). Run the same command again to retry it")
        log.error("%s: %d item(s) of stage %s will never finish: %s", store.run_id, len(left), stage, reason)
        for key in left:
            store.mark_failed(stage, key, reason, attempts=0)


def stall_watch(settings: Settings, app: Celery, queue: str, task: str) -> StallWatch:
    """The watch over ``queue`` (whose tasks are ``task``) of the broker the settings name."""
    return StallWatch(app, connect(settings.broker), queue, task, settings.stall_seconds)


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
    speed = StageSpeed(progress, time.monotonic())
    with tqdm(total=progress.total, desc=f"{store.run_id} {label or stage}", unit="pair",
              initial=progress.done + progress.failed, dynamic_ncols=True,
              bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} pairs [{elapsed}{postfix}]") as bar:
        while not progress.finished:
            check()
            time.sleep(poll_seconds)
            progress = poll.progress() or progress
            if stall is not None and not progress.finished and stall.stalled(progress):
                stall.recover(store, stage, keys)
                progress = poll.progress() or progress
            bar.update(progress.done + progress.failed - bar.n)
            bar.set_postfix_str(speed.describe(progress, time.monotonic()), refresh=False)
    return progress


class StageSpeed:
    """The progress bar's rate and ETA, in pairs, over the last RATE_WINDOW_SECONDS of this
    wait (tqdm's own would count a resumed run's earlier pairs, and reach zero between tasks)."""

    def __init__(self, progress: Progress, now: float):
        self.samples: list[list[float]] = [[now, progress.done, progress.failed]]

    def describe(self, progress: Progress, now: float) -> str:
        """``failed 2, 120.5 pairs/min, ETA 0:05:12``, the newest reading taken as a sample."""
        if [progress.done, progress.failed] != self.samples[0][1:]:
            self.samples.insert(0, [now, progress.done, progress.failed])
            while len(self.samples) > 1 and self.samples[-1][0] < now - RATE_WINDOW_SECONDS:
                self.samples.pop()  # the rate reads the window only
        remaining = progress.total - progress.done - progress.failed
        speed = rate_and_eta(self.samples, remaining, now)
        return (f"failed {progress.failed}, {per_minute(speed['rate_per_min'])} pairs/min, "
                f"ETA {duration(speed['eta_seconds'])}")


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
