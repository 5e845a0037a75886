"""The one base class of evalfleet's tasks: every item ends done or failed.

A task's arguments are ``(run_id, keys)``. Its body stores results for the items it
finishes and records the failures it can attribute to one item (a bad image). For
everything else this class decides, with Celery's own retry machinery:

- transient errors (CUDA out of memory, Redis or an object store unreachable, TransientError) are retried
  with exponential back-off (``autoretry_for``, ``retry_backoff``);
- any other exception is permanent (bad input, a bug, a time limit): retrying cannot
  help, so it is not retried;
- after the last attempt, ``on_failure`` records every item of the task that is not
  done as failed, with the exception's message. It runs for any exception, and Celery
  calls it for a hard time limit too, so no item is left neither done nor failed.

Redis outages inside a task are ridden out by the store connection itself (redis-py's
``Retry``, ``shared.store.connect``): one command waits for Redis, the task does not rerun.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from celery import Task
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from celery.signals import task_postrun

from shared.disk import as_disk_full, is_disk_full
from shared.messages import STAGE_OF_TASK
from shared.storage import StoreUnreachable
from shared.store import OUTAGE_ERRORS, RunStore
from workers.celery_app import settings
from workers.errors import PermanentError, TransientError
from workers.runtime import run_store

log = logging.getLogger(__name__)


def _transient_errors() -> tuple[type[BaseException], ...]:
    """What is worth a retry. CUDA running out of memory is, when another process freed it; an
    object store that did not answer may answer the next attempt."""
    import torch

    return (TransientError, torch.cuda.OutOfMemoryError, StoreUnreachable, *OUTAGE_ERRORS)


# What is worth a retry (the task's autoretry_for).
TRANSIENT_ERRORS = _transient_errors()
# What concerns the whole task, never one of its items: a body that handles items one by
# one lets these through.
TASK_LEVEL_ERRORS = (*TRANSIENT_ERRORS, SoftTimeLimitExceeded)


def pending_items(store: RunStore, stage: str, keys: list[str]) -> dict[str, dict[str, Any]]:
    """The items of ``keys`` not done yet: a redelivered task skips what finished."""
    done = store.is_done(stage, keys)
    items = store.get_items(stage, keys)
    pending = {}
    for key, is_done, item in zip(keys, done, items):
        if item is None:
            log.warning("run %s has no %s item %r; skipped", store.run_id, stage, key)
        elif not is_done:
            pending[key] = item
    return pending


def failure_message(exc: BaseException) -> str:
    """The reason the report shows for a task that failed as a whole."""
    if isinstance(exc, PermanentError):
        return str(exc)
    if is_disk_full(exc):  # "no space left on <folder>": which disk to free
        return str(as_disk_full(exc, "the worker's disk"))
    if any(isinstance(e, (SoftTimeLimitExceeded, TimeLimitExceeded)) for e in _chain(exc)):
        return (f"the task ran past its time limit of {settings.task_time_limit} s "
                f"(EVALFLEET_TASK_TIME_LIMIT); see the worker log")
    return f"{type(exc).__name__}: {exc}"


# Within a task, a process samples its stage's progress at most this often (seconds): enough
# for a rate over status's window, few enough that the samples kept span that window.
SAMPLE_SECONDS = 5.0
_last_sample: dict[tuple[str, str], float] = {}


def sample_progress(store: RunStore, stage: str, force: bool = False) -> None:
    """Sample the stage's progress (``status`` derives a rate and an ETA from the samples):
    at the end of every task, and within one as its items end, at most every SAMPLE_SECONDS."""
    now = time.monotonic()
    if not force and now - _last_sample.get((store.run_id, stage), -SAMPLE_SECONDS) < SAMPLE_SECONDS:
        return
    _last_sample[store.run_id, stage] = now
    try:
        store.add_progress_sample(stage)
    except redis.RedisError as exc:
        log.warning("could not record a progress sample: %s", exc)


@task_postrun.connect
def _sample_progress(sender=None, args=None, **_: Any) -> None:
    """After each task, sample its stage's progress."""
    stage = STAGE_OF_TASK.get(getattr(sender, "name", ""))
    if stage is None or not args:
        return
    sample_progress(run_store(str(args[0])), stage, force=True)


class ItemTask(Task):
    """Base of every evalfleet task (``@app.task(base=ItemTask, stage=..., ...)``)."""

    # The run store stage whose items the task's keys name.
    stage = ""
    acks_late = True
    max_retries = settings.task_max_retries
    autoretry_for = TRANSIENT_ERRORS
    # A time limit is never worth a retry: the same work would hit it again.
    dont_autoretry_for = (SoftTimeLimitExceeded, PermanentError)
    # Celery's back-off: factor x 2^n seconds (the factor is whole seconds, at least 1).
    retry_backoff = settings.retry_backoff_seconds
    retry_backoff_max = settings.visibility_timeout // 4
    retry_jitter = False

    def on_retry(self, exc, task_id, args, kwargs, einfo) -> None:
        # Also called in the worker's main process (a task cancelled on a lost broker
        # connection), where the request has no retry count.
        log.warning("%s task for %s failed (%r); retry %d", self.name, _keys(args), exc,
                    (self.request.retries or 0) + 1)

    def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:
        """Record every unfinished item of the task as failed, whatever the exception."""
        stage, keys = self.stage, _keys(args)
        if not stage or not keys:
            return
        attempts = (self.request.retries or 0) + 1
        reason = failure_message(exc)
        log.error("%s task for %s failed after %d attempt(s): %s", stage, keys, attempts, reason)
        store = run_store(str(args[0]))
        try:
            for key in keys:
                store.mark_failed(stage, key, reason, attempts)
        except redis.RedisError as store_exc:
            # Redis unreachable, or refusing writes (MISCONF: its disk is full): the message
            # stays unacknowledged (the ack needs Redis too) and comes back after the visibility
            # timeout, or the rerun sends the items again: they are not lost. The worker goes on.
            log.error("could not record the failure of %s: %s", keys, store_exc)


def _chain(exc: BaseException | None):
    """The exception and its causes: a library may wrap the time limit (a failed lazy import)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _keys(args: Any) -> list[str]:
    return [str(k) for k in args[1]] if args and len(args) > 1 else []
