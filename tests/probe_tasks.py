"""Tasks on evalfleet's own base class that fail in chosen ways, for tests/test_task_failures.py.

A real worker runs them: ``celery -A probe_tasks worker -Q relations`` (tests/ on the path).
Each marks its items done when it succeeds, like the real tasks.
"""

from __future__ import annotations

import time

from celery.exceptions import SoftTimeLimitExceeded

from workers.celery_app import app
from workers.runtime import run_store
from workers.errors import PermanentError, TransientError
from workers.tasks.base import ItemTask

STAGE = "probe"


def _done(run_id: str, keys: list[str]) -> None:
    store = run_store(run_id)
    for key in keys:
        store.mark_done(STAGE, key, {"ok": True})


@app.task(bind=True, base=ItemTask, stage=STAGE, name="probe.flaky")
def flaky(self, run_id: str, keys: list[str], failures: int) -> None:
    """Raises a transient error on its first ``failures`` attempts, then succeeds."""
    store = run_store(run_id)
    store.count(STAGE, "attempts")
    if store.stats(STAGE)["attempts"] <= failures:
        raise TransientError("busy for a moment")
    _done(run_id, keys)


@app.task(bind=True, base=ItemTask, stage=STAGE, name="probe.bug")
def bug(self, run_id: str, keys: list[str]) -> None:
    """A programming error: permanent, never retried."""
    run_store(run_id).count(STAGE, "attempts")
    return {}["image_path"]


@app.task(bind=True, base=ItemTask, stage=STAGE, name="probe.permanent")
def permanent(self, run_id: str, keys: list[str]) -> None:
    run_store(run_id).count(STAGE, "attempts")
    raise PermanentError("the model 'x' does not exist: set EVALFLEET_RELATIONS_MODEL")


@app.task(bind=True, base=ItemTask, stage=STAGE, name="probe.partial")
def partial(self, run_id: str, keys: list[str]) -> None:
    """Finishes its first item, then raises: only the unfinished ones fail."""
    _done(run_id, keys[:1])
    raise OSError(36, "File name too long")


@app.task(bind=True, base=ItemTask, stage=STAGE, name="probe.block")
def block(self, run_id: str, keys: list[str], ignore_soft_limit: bool) -> None:
    """Blocks (as ``open()`` on a FIFO does) past the time limits."""
    try:
        time.sleep(3600)
    except SoftTimeLimitExceeded:
        if not ignore_soft_limit:
            raise
        time.sleep(3600)  # a block the soft limit cannot interrupt: the hard limit kills it


def release_key(run_id: str) -> str:
    """The list a ``probe.hold`` task of the run waits on: one push releases one task."""
    return f"probe:{run_id}:release"


@app.task(bind=True, base=ItemTask, stage=STAGE, name="probe.hold")
def hold(self, run_id: str, keys: list[str]) -> None:
    """A long task, as long as the test wants: it says it started, then holds until released."""
    store = run_store(run_id)
    store.count(STAGE, "holding")
    store.client.blpop([release_key(run_id)], timeout=600)
    _done(run_id, keys)
