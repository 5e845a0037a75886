"""Every item ends done or failed, whatever a task raises (tests/probe_tasks.py, a real worker).

The class of faults, not examples: a transient error is retried with back-off then
succeeds or fails; a bug or a permanent error fails at once; a task blocked forever is
stopped by the soft time limit, or killed by the hard one; the items a task finished
before it raised stay done.
"""

from __future__ import annotations

import time

import pytest

from conftest import started_probe_worker, wait_until
from config import Settings
from producer.dispatch import celery_client
from producer.embedded import EmbeddedRedis
from shared.store import RunStore, connect

STAGE = "probe"
TIME_LIMIT = 2
MAX_RETRIES = 2


@pytest.fixture(scope="module")
def probe_worker(tmp_path_factory):
    directory = tmp_path_factory.mktemp("probe")
    with EmbeddedRedis(directory / "redis") as server:
        with started_probe_worker(server.url, directory, EVALFLEET_TASK_TIME_LIMIT=str(TIME_LIMIT),
                                  EVALFLEET_TASK_MAX_RETRIES=str(MAX_RETRIES),
                                  EVALFLEET_RETRY_BACKOFF_SECONDS="1"):
            yield server, celery_client(Settings(broker_url=server.url))


def run_probe(probe_worker, task: str, n_items: int, *extra) -> RunStore:
    server, app = probe_worker
    store = RunStore(connect(server.url), f"{task}-{time.monotonic_ns()}")
    keys = [f"item{i}" for i in range(n_items)]
    store.add_items(STAGE, {key: {"n": i} for i, key in enumerate(keys)})
    app.send_task(task, args=[store.run_id, keys, *extra], queue="relations")
    wait_until(lambda: store.progress(STAGE).finished, 60, f"{task}: every item done or failed")
    return store


def test_a_transient_error_is_retried_with_backoff_then_succeeds(probe_worker):
    started = time.monotonic()
    store = run_probe(probe_worker, "probe.flaky", 3, MAX_RETRIES)
    assert store.progress(STAGE).done == 3
    assert store.stats(STAGE)["attempts"] == MAX_RETRIES + 1
    assert time.monotonic() - started >= 1 + 2  # Celery's back-off: 1 s, then 2 s


def test_a_transient_error_past_the_retries_fails_every_item_with_the_attempts(probe_worker):
    store = run_probe(probe_worker, "probe.flaky", 3, MAX_RETRIES + 5)
    failed = store.failed(STAGE)
    assert sorted(failed) == ["item0", "item1", "item2"]
    assert {f["attempts"] for f in failed.values()} == {MAX_RETRIES + 1}
    assert {f["reason"] for f in failed.values()} == {"TransientError: busy for a moment"}


@pytest.mark.parametrize("task, reason", [
    ("probe.bug", "KeyError: 'image_path'"),
    ("probe.permanent", "the model 'x' does not exist: set EVALFLEET_RELATIONS_MODEL"),
])
def test_a_bug_or_a_permanent_error_fails_every_item_at_once(probe_worker, task, reason):
    store = run_probe(probe_worker, task, 2)
    failed = store.failed(STAGE)
    assert sorted(failed) == ["item0", "item1"]
    assert {(f["reason"], f["attempts"]) for f in failed.values()} == {(reason, 1)}
    assert store.stats(STAGE)["attempts"] == 1  # not retried


def test_items_finished_before_the_exception_stay_done_the_others_fail(probe_worker):
    store = run_probe(probe_worker, "probe.partial", 3)
    assert store.done_keys(STAGE) == {"item0"}
    assert sorted(store.failed(STAGE)) == ["item1", "item2"]
    assert "File name too long" in store.failed(STAGE)["item1"]["reason"]


@pytest.mark.parametrize("ignore_soft_limit", [False, True], ids=["soft-limit", "hard-limit"])
def test_a_blocked_task_is_stopped_by_its_time_limit_and_fails_its_items(probe_worker, ignore_soft_limit):
    started = time.monotonic()
    store = run_probe(probe_worker, "probe.block", 2, ignore_soft_limit)
    failed = store.failed(STAGE)
    assert sorted(failed) == ["item0", "item1"]
    assert all("time limit of 2 s (EVALFLEET_TASK_TIME_LIMIT)" in f["reason"] for f in failed.values())
    assert time.monotonic() - started < 30
    # The worker goes on: a task after the blocked one runs (the hard limit replaced its process).
    assert run_probe(probe_worker, "probe.flaky", 1, 0).progress(STAGE).done == 1
