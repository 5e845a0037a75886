"""The stall warning is true: a worker busy with a long task is no stall; a queue nobody takes is.

The task is made long by holding it (tests/probe_tasks.py, ``probe.hold``) and time is the
watch's own clock, moved by the test: nothing waits for a race.
"""

from __future__ import annotations

import logging

import pytest

from conftest import started_probe_worker, wait_until
from config import Settings
from probe_tasks import STAGE, release_key
from producer.dispatch import celery_client
from producer.embedded import EmbeddedRedis
from producer.progress import StallWatch
from shared.store import RunStore, connect

STALL_SECONDS = 60.0


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def held_worker(tmp_path):
    """(Celery client, Redis client) with one worker on queue ``relations`` holding a task of
    run ``long`` (it will not end before the test releases it) and one more task waiting."""
    with EmbeddedRedis(tmp_path / "redis") as server:
        with started_probe_worker(server.url, tmp_path):
            app, client = celery_client(Settings(broker_url=server.url)), connect(server.url)
            store = RunStore(client, "long")
            store.add_items(STAGE, {"a": {}, "b": {}})
            for key in ("a", "b"):
                app.send_task("probe.hold", args=["long", [key]], queue="relations")
            wait_until(lambda: store.stats(STAGE).get("holding") == 1, 60, "the worker holding a task")
            yield app, client
            client.rpush(release_key("long"), 1, 1)
            wait_until(lambda: store.progress(STAGE).finished, 60, "both tasks released")


def watch_past_the_stall_period(app, client, queue: str) -> bool:
    """A watch over ``queue`` that saw nothing move for longer than the stall period."""
    clock = Clock()
    watch = StallWatch(app, client, queue, "probe.hold", STALL_SECONDS, clock=clock)
    progress = RunStore(client, "long").progress(STAGE)
    assert not watch.stalled(progress)
    clock.now += STALL_SECONDS + 1
    return watch.stalled(progress)


def test_a_worker_busy_with_a_long_task_is_no_stall(held_worker, caplog):
    app, client = held_worker
    assert client.llen("relations") == 1  # the next task waits for the busy worker
    with caplog.at_level(logging.WARNING, logger="producer.progress"):
        assert not watch_past_the_stall_period(app, client, "relations")
    assert caplog.records == []


def test_tasks_waiting_where_no_worker_holds_one_are_warned(held_worker, caplog):
    app, client = held_worker
    # Queue "edit" has a task waiting and no worker consuming it.
    app.send_task("probe.hold", args=["long", ["b"]], queue="edit")
    with caplog.at_level(logging.WARNING, logger="producer.progress"):
        assert not watch_past_the_stall_period(app, client, "edit")
    [warning] = caplog.records
    assert "1 task(s) wait in queue 'edit'" in warning.getMessage()
    assert "no live worker holds a task of it" in warning.getMessage()
    client.delete("edit")
