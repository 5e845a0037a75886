"""What every evalfleet task does the same way: skip finished items, retry, then give up
(at once when retrying cannot help)."""

from __future__ import annotations

import logging
from typing import Any

from celery import Task

from shared.store import RunStore
from workers.celery_app import settings

log = logging.getLogger(__name__)


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


class PermanentError(Exception):
    """Retrying cannot help (the model does not exist, it can never fit): fail the items at once.

    The message is the failure reason the report shows, so it must say what to fix.
    """


def give_up_or_retry(task: Task, store: RunStore, stage: str, keys: list[str], exc: Exception) -> None:
    """Retry with exponential back-off; after the last retry, record the items as failed.

    A PermanentError fails the items at once, with its message alone as the reason.
    """
    attempts = task.request.retries + 1
    if isinstance(exc, PermanentError):
        log.error("%s task for %s failed, not retried: %s", stage, keys, exc)
        for key in keys:
            store.mark_failed(stage, key, str(exc), attempts)
        return
    if attempts > task.max_retries:
        log.error("%s task for %s failed %d times, giving up: %r", stage, keys, attempts, exc)
        for key in keys:
            store.mark_failed(stage, key, f"{type(exc).__name__}: {exc}", attempts)
        return
    countdown = settings.retry_backoff_seconds * 2 ** task.request.retries
    log.warning("%s task for %s failed (%r); retry %d in %.1fs", stage, keys, exc, attempts, countdown)
    raise task.retry(exc=exc, countdown=countdown)
